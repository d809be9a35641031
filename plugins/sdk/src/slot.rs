//! The exported component's state: the policy `init` built, read by every `route`.

use std::sync::{PoisonError, RwLock};

use crate::{reject, Candidate, Decision, Policy, Request};

/// Holds the policy of one component instance.
///
/// A `RwLock` rather than a `OnceLock` so a later `init` on the same instance
/// replaces the policy instead of being ignored. On `wasm32-wasip2` there are
/// no threads, so the lock is never contended.
pub struct Slot<P> {
    policy: RwLock<Option<P>>,
}

impl<P: Policy> Slot<P> {
    pub const fn new() -> Self {
        Self {
            policy: RwLock::new(None),
        }
    }

    /// Builds the policy from `config`. A refused config leaves the slot as it
    /// was: the host discards a version whose `init` failed anyway.
    pub fn init(&self, config: &str) -> Result<(), String> {
        let policy = P::init(config)?;
        // A poisoned lock only means an earlier call trapped mid-way; the
        // value is replaced whole, so nothing half-written can be seen.
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Some(policy);
        Ok(())
    }

    /// Asks the policy; before a successful `init` that is a host bug, hence 500.
    pub fn route(&self, request: &Request, candidates: &[Candidate]) -> Decision {
        match &*self.policy.read().unwrap_or_else(PoisonError::into_inner) {
            Some(policy) => policy.route(request, candidates),
            None => reject(500, "policy called before a successful init"),
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
    use super::*;
    use crate::route_to;
    use crate::testing::{candidate, request};

    /// Routes to the first candidate; refuses any config but `ok`.
    struct First;

    impl Policy for First {
        fn init(config: &str) -> Result<Self, String> {
            match config {
                "ok" => Ok(First),
                other => Err(format!("bad config {other:?}")),
            }
        }

        fn route(&self, request: &Request, candidates: &[Candidate]) -> Decision {
            route_to(request, candidates.iter().take(1))
        }
    }

    #[test]
    fn route_before_init_rejects_with_500() {
        let slot = Slot::<First>::new();
        let Decision::Reject(rejection) = slot.route(&request(), &[candidate("w1")]) else {
            panic!("expected a rejection");
        };
        assert_eq!(rejection.status, 500);
    }

    #[test]
    fn failed_init_is_reported_and_leaves_slot_empty() {
        let slot = Slot::<First>::new();
        assert_eq!(slot.init("nope"), Err("bad config \"nope\"".to_string()));
        assert!(matches!(
            slot.route(&request(), &[candidate("w1")]),
            Decision::Reject(_)
        ));
    }

    #[test]
    fn routes_after_init() {
        let slot = Slot::<First>::new();
        slot.init("ok").unwrap();
        assert_eq!(
            slot.route(&request(), &[candidate("w1"), candidate("w2")]),
            Decision::Route(vec!["w1".into()])
        );
    }
}
