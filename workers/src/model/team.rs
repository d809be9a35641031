//! The threads the forward passes of a process run their parallel loops on.
//!
//! Why not rayon's pool: a decode step runs ~150 short loops (a 0.2-1 MB
//! matrix product, one layer's attention), and rayon's fork and join cost
//! 3-5 µs of each (the idle thread has gone to sleep and is woken by a
//! system call), a tenth or more of a batch-1 token on 2 cores. The team's
//! helpers spin on a counter for a while after each loop, so the next one
//! starts them with one store; idle longer than that (between steps, or
//! while another engine in the process has the cores), they park.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks: longer than the gaps
/// between the loops of a step (norms, rotations: a few µs), short enough
/// that an idle engine gives its cores back at once.
const SPIN: Duration = Duration::from_micros(50);

pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<(Thread, JoinHandle<()>)>,
    /// Held through a loop: callers on other threads (other engines in one
    /// process) take turns instead of oversubscribing the cores.
    turn: Mutex<()>,
}

struct Shared {
    /// Bumped to start a loop.
    generation: AtomicUsize,
    /// The loop's body, erased: valid from its `generation` until `busy` is 0.
    job: Mutex<Option<Job>>,
    /// The next task index to hand out.
    next: AtomicUsize,
    /// Helpers still in the current loop.
    busy: AtomicUsize,
    /// Per helper: parked (or about to), so it needs an unpark.
    parked: Vec<AtomicBool>,
    /// The caller of `for_each` is parked (or about to) until `busy` is 0.
    caller_parked: AtomicBool,
    /// A helper's task panicked; the caller re-raises it.
    panicked: AtomicBool,
    stop: AtomicBool,
}

/// `(tasks, body)` with its lifetime erased (see `Team::for_each`), and
/// the thread waiting for it.
#[derive(Clone)]
struct Job {
    tasks: usize,
    body: &'static (dyn Fn(usize) + Sync),
    caller: Thread,
}

impl Team {
    /// A team of `threads`: the calling thread and `threads - 1` helpers.
    pub fn new(threads: usize) -> Team {
        let helpers = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            parked: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            caller_parked: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let helpers = (0..helpers)
            .map(|i| {
                let shared = shared.clone();
                let handle = thread::Builder::new()
                    .name(format!("forward-{}", i + 1))
                    .spawn(move || shared.serve(i))
                    .expect("spawning a forward-pass thread");
                (handle.thread().clone(), handle)
            })
            .collect();
        Team {
            shared,
            helpers,
            turn: Mutex::new(()),
        }
    }

    /// The process's team: one thread per core, as rayon's default pool has,
    /// shared by every forward pass.
    pub fn global() -> &'static Team {
        static TEAM: OnceLock<Team> = OnceLock::new();
        TEAM.get_or_init(|| Team::new(thread::available_parallelism().map_or(1, usize::from)))
    }

    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `body(i)` for every `i` in `0..tasks`, spread over the team (tasks
    /// are taken in order as threads come free), and returns when all are done.
    /// `body` must not start a loop on the same team.
    pub fn for_each(&self, tasks: usize, body: impl Fn(usize) + Sync) {
        let shared = &*self.shared;
        if self.helpers.is_empty() || tasks <= 1 {
            return (0..tasks).for_each(body);
        }
        // A panic in a loop leaves nothing half-done: take the lock regardless.
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let body: &(dyn Fn(usize) + Sync) = &body;
        // SAFETY: helpers call `body` only between this loop's `generation`
        // bump and their `busy` decrement, and this function does not return
        // (nor unwind) before `busy` is 0, so `body` outlives every call.
        let body: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(body) };
        *shared.job.lock().expect("job lock") = Some(Job {
            tasks,
            body,
            caller: thread::current(),
        });
        shared.next.store(0, Relaxed);
        shared.busy.store(self.helpers.len(), Relaxed);
        shared.generation.fetch_add(1, SeqCst);
        for ((thread, _), parked) in self.helpers.iter().zip(&shared.parked) {
            if parked.load(SeqCst) {
                thread.unpark();
            }
        }
        let mine = panic::catch_unwind(AssertUnwindSafe(|| shared.take_tasks(tasks, body)));
        // The helpers' last tasks end about when this thread's do, unless one
        // was preempted: then park, and let it have the core.
        wait_for(|| shared.busy.load(SeqCst) == 0, &shared.caller_parked);
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        if shared.panicked.swap(false, Relaxed) {
            panic!("a forward-pass thread panicked");
        }
    }

    /// Runs `body(i, chunk)` for each `chunk` of `data` (`size` items, the last
    /// one shorter), as `for_each` does.
    pub fn for_chunks<T: Send>(
        &self,
        data: &mut [T],
        size: usize,
        body: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let (len, at) = (data.len(), SendPtr(data.as_mut_ptr()));
        self.for_each(len.div_ceil(size), |i| {
            let start = i * size;
            // SAFETY: chunk `i` is `data[start..start + size]` cut to `len`, in
            // bounds since `i < len.div_ceil(size)`; each task has its own
            // chunk, and `data`'s borrow outlives `for_each`.
            let chunk = unsafe {
                std::slice::from_raw_parts_mut(at.get().add(start), size.min(len - start))
            };
            body(i, chunk)
        });
    }
}

/// A pointer shared by the tasks of a loop, each writing its own part of
/// what it points to (`for_chunks`: its chunk; the GEMM: its columns).
pub struct SendPtr<T>(pub *mut T);
// SAFETY: every user has its tasks write disjoint parts, each saying why.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method, not field access, so closures capture the whole (Sync) wrapper.
    pub fn get(&self) -> *mut T {
        self.0
    }
}

impl Shared {
    fn take_tasks(&self, tasks: usize, body: &(dyn Fn(usize) + Sync)) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= tasks {
                return;
            }
            body(i);
        }
    }

    /// Helper `me`'s life: wait for a loop, take its tasks, report done.
    fn serve(&self, me: usize) {
        let mut seen = 0;
        loop {
            let generation = self.wait(me, seen);
            if self.stop.load(Acquire) {
                return;
            }
            seen = generation;
            let job = self
                .job
                .lock()
                .expect("job lock")
                .clone()
                .expect("a job is set");
            let run = || self.take_tasks(job.tasks, job.body);
            if panic::catch_unwind(AssertUnwindSafe(run)).is_err() {
                self.panicked.store(true, Relaxed);
            }
            // The last helper out wakes a parked caller; as with the helpers'
            // `parked`, either it sees the flag or the caller sees `busy` at 0.
            if self.busy.fetch_sub(1, SeqCst) == 1 && self.caller_parked.load(SeqCst) {
                job.caller.unpark();
            }
        }
    }

    /// The first generation after `seen` (or any, once stopping).
    fn wait(&self, me: usize, seen: usize) -> usize {
        let mut generation = seen;
        wait_for(
            || {
                generation = self.generation.load(SeqCst);
                generation != seen || self.stop.load(SeqCst)
            },
            &self.parked[me],
        );
        generation
    }
}

/// Returns once `done()`: spinning for `SPIN`, then parked. The thread that
/// makes it true must unpark this one if it sees `parked` set; since `parked`
/// is set before the last look, either it sees the flag or was seen here.
fn wait_for(mut done: impl FnMut() -> bool, parked: &AtomicBool) {
    let started = Instant::now();
    let mut spins = 0u32;
    while !done() {
        spins += 1;
        if !spins.is_multiple_of(64) || started.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        parked.store(true, SeqCst);
        if !done() {
            thread::park();
        }
        parked.store(false, Relaxed);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        for (thread, handle) in self.helpers.drain(..) {
            thread.unpark();
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_whatever_the_team_size() {
        for threads in [1, 2, 3] {
            let team = Team::new(threads);
            for tasks in [0, 1, 2, 7, 100] {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                team.for_each(tasks, |i| {
                    counts[i].fetch_add(1, Relaxed);
                });
                assert!(
                    counts.iter().all(|c| c.load(Relaxed) == 1),
                    "{threads}, {tasks}"
                );
            }
        }
    }

    #[test]
    fn parked_helpers_wake_for_the_next_loop() {
        let team = Team::new(2);
        let ran_on = Mutex::new(std::collections::HashSet::new());
        for _ in 0..3 {
            thread::sleep(SPIN * 4);
            // Each task holds its thread until the other thread has one too,
            // so both must take part.
            let started = AtomicUsize::new(0);
            team.for_each(2, |_| {
                started.fetch_add(1, SeqCst);
                while started.load(SeqCst) < 2 {
                    std::hint::spin_loop();
                }
                ran_on.lock().unwrap().insert(thread::current().id());
            });
        }
        assert_eq!(ran_on.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_team_goes_on() {
        let team = Team::new(2);
        for bad in [0, 5] {
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                team.for_each(8, |i| assert_ne!(i, bad, "task {i}"));
            }));
            assert!(result.is_err());
        }
        let total = AtomicUsize::new(0);
        team.for_each(8, |i| {
            total.fetch_add(i, Relaxed);
        });
        assert_eq!(total.load(Relaxed), 28);
    }

    #[test]
    fn chunks_cover_the_data_each_once() {
        let team = Team::new(2);
        let mut data = vec![0usize; 23];
        team.for_chunks(&mut data, 5, |i, chunk| {
            assert_eq!(chunk.len(), if i == 4 { 3 } else { 5 });
            chunk.iter_mut().for_each(|v| *v += i + 1);
        });
        let expected: Vec<usize> = (0..23).map(|j| j / 5 + 1).collect();
        assert_eq!(data, expected);
    }
}
