//! The exported component's state: the policy `init` built and the workers
//! `set-workers` sent, read by every `route`.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::bindings::llmgw::policy::types;
use crate::{reject, view, Decision, Engine, Policy, Request, Worker};

/// Holds the policy and the worker table of one component instance.
///
/// Cells rather than `OnceCell`s so a later `init` or `set-workers` on the
/// same instance replaces what it holds. No call re-enters another, so no
/// borrow is ever refused.
pub struct Slot<P> {
    policy: RefCell<Option<P>>,
    workers: RefCell<Vec<Worker>>,
    engines: RefCell<Vec<Engine>>,
}

// SAFETY: the component's `static` slot is only touched by its exports, and
// wasm32 without the `atomics` feature runs one thread: nothing shares it.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<P> Sync for Slot<P> {}

impl<P: Policy> Slot<P> {
    pub const fn new() -> Self {
        Self {
            policy: RefCell::new(None),
            workers: RefCell::new(Vec::new()),
            engines: RefCell::new(Vec::new()),
        }
    }

    /// Builds the policy from `config`. A refused config leaves the slot as it
    /// was: the host discards a version whose `init` failed anyway.
    pub fn init(&self, config: &str) -> Result<(), String> {
        let policy = P::init(config)?;
        *self.policy.borrow_mut() = Some(policy);
        Ok(())
    }

    /// Keeps the pool's workers, which later candidates refer to by index,
    /// and their engines, in the same order.
    pub fn set_workers(&self, workers: Vec<Worker>, engines: Vec<Engine>) {
        *self.workers.borrow_mut() = workers;
        *self.engines.borrow_mut() = engines;
    }

    /// Asks the policy about `candidates` joined with the workers; before a
    /// successful `init`, or with a candidate whose worker was never sent,
    /// that is a host bug, hence 500.
    pub fn route(&self, request: &Request, candidates: &types::Candidates) -> Decision {
        let policy = self.policy.borrow();
        let Some(policy) = &*policy else {
            return reject(500, "policy called before a successful init");
        };
        let (workers, engines) = (self.workers.borrow(), self.engines.borrow());
        match view::join(&workers, &engines, candidates) {
            Ok(candidates) => policy.route(request, &candidates),
            Err(message) => reject(500, message),
        }
    }
}

impl<P: Policy> Default for Slot<P> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use alloc::{format, vec};

    use super::*;
    use crate::testing::{candidate, request, wire};
    use crate::{route_to, Candidate};

    /// Routes to the first candidate; refuses any config but `ok`.
    struct First;

    impl Policy for First {
        fn init(config: &str) -> Result<Self, String> {
            match config {
                "ok" => Ok(First),
                other => Err(format!("bad config {other:?}")),
            }
        }

        fn route(&self, request: &Request, candidates: &[Candidate<'_>]) -> Decision {
            route_to(request, candidates.iter().take(1))
        }
    }

    /// Candidates on the table's `workers`.
    fn on(workers: &[u32]) -> types::Candidates {
        let cs = vec![candidate("w"); workers.len()];
        wire(&cs, workers.iter().copied())
    }

    fn status(decision: Decision) -> u16 {
        match decision {
            Decision::Reject(rejection) => rejection.status,
            Decision::Route(order) => panic!("routed to {order:?}"),
        }
    }

    #[test]
    fn route_before_init_rejects_with_500() {
        let slot = Slot::<First>::new();
        slot.set_workers(vec![candidate("w1").worker], Vec::new());
        assert_eq!(status(slot.route(&request(), &on(&[0]))), 500);
    }

    #[test]
    fn failed_init_is_reported_and_leaves_slot_empty() {
        let slot = Slot::<First>::new();
        assert_eq!(slot.init("nope"), Err("bad config \"nope\"".to_string()));
        slot.set_workers(vec![candidate("w1").worker], Vec::new());
        assert_eq!(status(slot.route(&request(), &on(&[0]))), 500);
    }

    #[test]
    fn a_candidate_of_a_worker_never_sent_rejects_with_500() {
        let slot = Slot::<First>::new();
        slot.init("ok").unwrap();
        assert_eq!(status(slot.route(&request(), &on(&[0]))), 500);
    }

    #[test]
    fn routes_after_init_and_workers() {
        let slot = Slot::<First>::new();
        slot.init("ok").unwrap();
        slot.set_workers(
            vec![candidate("w1").worker, candidate("w2").worker],
            Vec::new(),
        );
        assert_eq!(
            slot.route(&request(), &on(&[1, 0])),
            Decision::Route(vec![0])
        );
        // A new table replaces the old one.
        slot.set_workers(vec![candidate("w3").worker], Vec::new());
        assert_eq!(status(slot.route(&request(), &on(&[1]))), 500);
    }
}
