//! What the host offers a policy (log, clock, random, the workers' engines,
//! the request's caller), with stand-ins when the policy runs natively.

pub use crate::Level;

pub use imp::{fail_closed, log, now_ms, random, request_caller, worker_engines};
#[cfg(not(target_arch = "wasm32"))]
pub use imp::{seed_random, set_request_caller};

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::llmgw::policy::host;
    use crate::Level;

    /// Logs through the gateway, which tags the line with the plugin's name and version.
    pub fn log(level: Level, message: &str) {
        host::log(level, message);
    }

    /// Milliseconds since the Unix epoch, by the host's clock.
    pub fn now_ms() -> u64 {
        host::now_ms()
    }

    /// A random number from the host's generator.
    pub fn random() -> u64 {
        host::random()
    }

    /// The engine of each worker the host last sent, in its order.
    pub fn worker_engines() -> alloc::vec::Vec<crate::Engine> {
        host::worker_engines()
    }

    /// Who sent the request being routed: its API key's tenant and priority.
    pub fn request_caller() -> crate::Caller {
        host::request_caller()
    }

    /// From `init`: when this policy fails on a request, the gateway tries
    /// the plugin's previous version and then answers 503, never routing by
    /// its built-in policy (for policies that keep requests off workers).
    pub fn fail_closed() {
        host::fail_closed()
    }
}

/// Natively there is no host: these let a policy's unit tests run on the
/// build machine, and are never compiled into a component.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use core::cell::Cell;
    use std::thread_local;
    use std::time::{SystemTime, UNIX_EPOCH};

    use crate::Level;

    thread_local! {
        // Each test thread starts from the same seed, so tests that draw
        // random numbers are reproducible without seeding explicitly.
        static STATE: Cell<u64> = const { Cell::new(0x5eed) };
        static CALLER: core::cell::RefCell<Option<crate::Caller>> = const { core::cell::RefCell::new(None) };
    }

    /// Writes to stderr, which the test harness captures per test.
    pub fn log(level: Level, message: &str) {
        std::eprintln!("[{level:?}] {message}");
    }

    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64)
    }

    /// SplitMix64 over a thread-local state: fast, and fine for test draws.
    pub fn random() -> u64 {
        STATE.with(|state| {
            let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(next);
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    /// Natively no host sends workers: tests give engines through
    /// `testing`'s candidates instead.
    pub fn worker_engines() -> alloc::vec::Vec<crate::Engine> {
        alloc::vec::Vec::new()
    }

    /// The caller [`set_request_caller`] gave this thread; else no tenant, normal priority.
    pub fn request_caller() -> crate::Caller {
        CALLER
            .with(|c| c.borrow().clone())
            .unwrap_or(crate::Caller {
                tenant: None,
                priority: crate::Priority::Normal,
            })
    }

    /// What [`request_caller`] returns on this thread from now on, as the
    /// host would for a request sent with such a key.
    pub fn set_request_caller(caller: crate::Caller) {
        CALLER.with(|c| *c.borrow_mut() = Some(caller));
    }

    /// Natively there is no host to tell: a no-op.
    pub fn fail_closed() {}

    /// Restarts this thread's sequence of [`random`] numbers from `seed`.
    pub fn seed_random(seed: u64) {
        STATE.with(|state| state.set(seed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_replays_the_sequence() {
        seed_random(7);
        let first = [random(), random(), random()];
        seed_random(7);
        assert_eq!(first, [random(), random(), random()]);
        assert_ne!(first[0], first[1]);
    }

    #[test]
    fn clock_is_past_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
