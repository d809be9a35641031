//! A call's deadline, counted in the calling thread's CPU time so that a
//! guest descheduled by the OS (a compilation or a busy neighbour on the
//! same cores) is not mistaken for a guest that loops.
//!
//! The engine's epoch advances by wall-clock ticks; when a call's ticks run
//! out, `on_expiry` runs instead of trapping at once. From then on it reads
//! the thread's CPU clock once per tick and interrupts the guest once it has
//! burnt a whole budget of CPU since the wall deadline passed, or once a hard
//! wall-clock cap is reached. A guest that needs no more than its budget of
//! CPU always finishes; a looping one stops after about twice its budget.
//! Reading the clock only after expiry keeps the normal call free of syscalls.

use std::time::Duration;

use rustix::time::{clock_gettime, ClockId};
use wasmtime::UpdateDeadline;

/// The engine's epoch advances this often; deadlines are counted in these ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// Ticks covering at least `ms` milliseconds: the epoch may advance right
/// after the deadline is set, so one more than the whole count.
fn ticks(ms: u64) -> u64 {
    ms.div_ceil(TICK.as_millis() as u64) + 1
}

/// Past the wall deadline, a starved thread gets at most this many budgets of
/// wall time more: a bound on how long a request can wait on its policy.
const WALL_CAP_BUDGETS: u64 = 20;

#[derive(Debug, Default)]
pub(crate) struct Deadline {
    budget: Duration,
    /// Ticks to wait after expiry before interrupting regardless.
    cap_ticks: u64,
    /// Since the wall deadline passed: the thread's CPU time then, and ticks since.
    expired: Option<(Duration, u64)>,
}

impl Deadline {
    /// Starts a call with `budget_ms`; returns the ticks to set as the epoch deadline.
    pub fn arm(&mut self, budget_ms: u64) -> u64 {
        let ticks = ticks(budget_ms);
        self.budget = Duration::from_millis(budget_ms);
        self.cap_ticks = ticks.saturating_mul(WALL_CAP_BUDGETS);
        self.expired = None;
        ticks
    }

    /// The epoch passed the deadline: look again in one tick, or interrupt.
    pub fn on_expiry(&mut self) -> UpdateDeadline {
        let now = thread_cpu_time();
        match &mut self.expired {
            None => {
                self.expired = Some((now, 0));
                UpdateDeadline::Continue(1)
            }
            Some((at_expiry, ticks)) => {
                *ticks += 1;
                if now.saturating_sub(*at_expiry) >= self.budget || *ticks >= self.cap_ticks {
                    UpdateDeadline::Interrupt
                } else {
                    UpdateDeadline::Continue(1)
                }
            }
        }
    }
}

fn thread_cpu_time() -> Duration {
    let time = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinning_thread_is_interrupted_after_its_budget() {
        let mut deadline = Deadline::default();
        deadline.arm(2);
        assert!(matches!(deadline.on_expiry(), UpdateDeadline::Continue(1)));
        let start = std::time::Instant::now();
        let interrupted = loop {
            // Burn CPU, as a looping guest does between ticks.
            while start.elapsed() < Duration::from_micros(200) {}
            if let UpdateDeadline::Interrupt = deadline.on_expiry() {
                break true;
            }
            if start.elapsed() > Duration::from_secs(60) {
                break false;
            }
        };
        assert!(interrupted);
    }

    #[test]
    fn a_sleeping_thread_is_interrupted_by_the_wall_cap_only() {
        let mut deadline = Deadline::default();
        let ticks = deadline.arm(1);
        let mut expiries = 0;
        while !matches!(deadline.on_expiry(), UpdateDeadline::Interrupt) {
            expiries += 1;
        }
        // No CPU burnt between calls (almost): only the cap ends it.
        assert!(
            expiries as u64 >= ticks * WALL_CAP_BUDGETS / 2,
            "{expiries}"
        );
    }
}
