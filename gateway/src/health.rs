//! Worker health, two ways: active probes of `/health` with consecutive
//! thresholds, and a passive circuit breaker fed by real requests, with
//! exponential ejection and a single half-open trial. Both state machines are
//! pure; `probe` is the thin I/O loop around the first, `failover` feeds the
//! second.

use std::time::{Duration, Instant};

use crate::config::{BreakerConfig, HealthConfig};

/// What active probes say of a worker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ProbeState {
    /// Not probed yet: routable, so a fresh gateway serves at once; the first
    /// probe decides.
    #[default]
    Unknown,
    Healthy {
        failures: u32,
    },
    Unhealthy {
        successes: u32,
    },
}

impl ProbeState {
    pub fn routable(self) -> bool {
        !matches!(self, ProbeState::Unhealthy { .. })
    }

    pub fn name(self) -> &'static str {
        match self {
            ProbeState::Unknown => "unknown",
            ProbeState::Healthy { .. } => "healthy",
            ProbeState::Unhealthy { .. } => "unhealthy",
        }
    }

    /// The state after one more probe.
    pub fn record(self, ok: bool, config: &HealthConfig) -> ProbeState {
        match (self, ok) {
            (ProbeState::Unknown, true) => ProbeState::Healthy { failures: 0 },
            (ProbeState::Unknown, false) => ProbeState::Unhealthy { successes: 0 },
            (ProbeState::Healthy { .. }, true) => ProbeState::Healthy { failures: 0 },
            (ProbeState::Healthy { failures }, false)
                if failures + 1 >= config.unhealthy_threshold =>
            {
                ProbeState::Unhealthy { successes: 0 }
            }
            (ProbeState::Healthy { failures }, false) => ProbeState::Healthy {
                failures: failures + 1,
            },
            (ProbeState::Unhealthy { successes }, true)
                if successes + 1 >= config.healthy_threshold =>
            {
                ProbeState::Healthy { failures: 0 }
            }
            (ProbeState::Unhealthy { successes }, true) => ProbeState::Unhealthy {
                successes: successes + 1,
            },
            (ProbeState::Unhealthy { .. }, false) => ProbeState::Unhealthy { successes: 0 },
        }
    }
}

/// A circuit breaker: closed, open (ejected) until a deadline, then half-open
/// with one trial request whose outcome closes or reopens it.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    /// Ejections in a row; doubles the next ejection.
    ejections: u32,
    failure_threshold: u32,
    base: Duration,
    max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

impl Breaker {
    pub fn new(config: &BreakerConfig) -> Breaker {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
            ejections: 0,
            failure_threshold: config.failure_threshold,
            base: config.base_ejection,
            max: config.max_ejection,
        }
    }

    pub fn name(&self, now: Instant) -> &'static str {
        match self.state {
            BreakerState::Closed { .. } => "closed",
            _ if self.is_half_open(now) => "half_open",
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => "open",
        }
    }

    /// Open past its deadline, or half-open: the next request is a trial.
    pub fn is_half_open(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { .. } => true,
        }
    }

    /// Whether routing may consider this worker now (without taking the trial).
    pub fn available(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { trial_in_flight } => !trial_in_flight,
        }
    }

    /// Claims the right to send one request; a half-open breaker grants it once.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now < until => false,
            BreakerState::Open { .. }
            | BreakerState::HalfOpen {
                trial_in_flight: false,
            } => {
                self.state = BreakerState::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
            BreakerState::HalfOpen {
                trial_in_flight: true,
            } => false,
        }
    }

    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
        self.ejections = 0;
    }

    /// Records a failure; returns true when it ejects the worker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        let eject = match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.failure_threshold => {
                self.state = BreakerState::Closed {
                    failures: failures + 1,
                };
                false
            }
            BreakerState::Open { .. } => false,
            BreakerState::Closed { .. } | BreakerState::HalfOpen { .. } => true,
        };
        if eject {
            let backoff = self
                .base
                .saturating_mul(1 << self.ejections.min(16))
                .min(self.max);
            self.state = BreakerState::Open {
                until: now + backoff,
            };
            self.ejections += 1;
        }
        eject
    }

    /// Gives back an unused half-open trial (the attempt never reached the worker's verdict).
    pub fn release_trial(&mut self) {
        if let BreakerState::HalfOpen {
            trial_in_flight: true,
        } = self.state
        {
            self.state = BreakerState::HalfOpen {
                trial_in_flight: false,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(1),
            timeout: Duration::from_millis(1),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            ..HealthConfig::default()
        }
    }

    #[test]
    fn probes_need_consecutive_results() {
        let c = health();
        let s = ProbeState::Unknown.record(true, &c);
        assert!(s.routable());
        let s = s.record(false, &c);
        assert!(s.routable(), "one failure is below the threshold");
        let s = s.record(true, &c).record(false, &c);
        assert!(s.routable(), "a success resets the count");
        let s = s.record(false, &c);
        assert!(!s.routable());
        let s = s.record(true, &c);
        assert!(!s.routable());
        assert!(s.record(true, &c).routable());
    }

    fn breaker() -> Breaker {
        Breaker::new(&BreakerConfig {
            failure_threshold: 2,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(250),
        })
    }

    #[test]
    fn breaker_ejects_and_recovers_through_one_trial() {
        let mut b = breaker();
        let t0 = Instant::now();
        assert!(!b.on_failure(t0));
        assert!(b.on_failure(t0), "second failure ejects");
        assert!(!b.available(t0));
        assert!(!b.try_acquire(t0 + Duration::from_millis(99)));
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.available(t1));
        assert!(b.try_acquire(t1), "half-open grants one trial");
        assert!(!b.try_acquire(t1), "and only one");
        b.on_success();
        assert!(b.try_acquire(t1) && b.try_acquire(t1));
    }

    #[test]
    fn failed_trial_doubles_ejection_up_to_max() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.on_failure(t0);
        b.on_failure(t0); // open 100ms
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_acquire(t1));
        assert!(b.on_failure(t1)); // open 200ms
        assert!(!b.available(t1 + Duration::from_millis(199)));
        let t2 = t1 + Duration::from_millis(200);
        assert!(b.try_acquire(t2));
        assert!(b.on_failure(t2)); // 400ms capped at 250
        assert!(b.available(t2 + Duration::from_millis(250)));
    }

    #[test]
    fn released_trial_can_be_taken_again() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.on_failure(t0);
        b.on_failure(t0);
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_acquire(t1));
        b.release_trial();
        assert!(b.try_acquire(t1));
    }
}
