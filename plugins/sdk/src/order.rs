//! Shared steps of a policy: read a label, order by the built-in score, build the decision.

use crate::{Candidate, Decision, Rejection, Request};

/// The value of `candidate`'s label `key`, if it has one.
pub fn label<'c>(candidate: &'c Candidate, key: &str) -> Option<&'c str> {
    candidate
        .labels
        .iter()
        .find(|label| label.key == key)
        .map(|label| label.value.as_str())
}

/// Candidates from best to worst by the built-in score (lower is better),
/// ties broken by fewer requests in flight.
///
/// The sort is stable, so full ties keep the gateway's order and a policy that
/// re-sorts the result by a tier with a stable sort keeps score order within
/// each tier.
pub fn by_score(candidates: &[Candidate]) -> Vec<&Candidate> {
    let mut ordered: Vec<&Candidate> = candidates.iter().collect();
    // `total_cmp` gives a total order even if a score were NaN, so the sort
    // cannot panic or shuffle inconsistently inside the guest.
    ordered.sort_by(|a, b| {
        a.score
            .total_cmp(&b.score)
            .then(a.load.in_flight.cmp(&b.load.in_flight))
    });
    ordered
}

/// Routes to `ordered` in that order, or rejects with 503 when it is empty:
/// an empty route list is not a decision the gateway can act on.
pub fn route_to<'c>(
    request: &Request,
    ordered: impl IntoIterator<Item = &'c Candidate>,
) -> Decision {
    let ids: Vec<String> = ordered.into_iter().map(|c| c.id.clone()).collect();
    if ids.is_empty() {
        return reject(
            503,
            format!("no routable worker in pool {:?}", request.pool),
        );
    }
    Decision::Route(ids)
}

/// A rejection the gateway returns to the client with `status`.
pub fn reject(status: u16, message: impl Into<String>) -> Decision {
    Decision::Reject(Rejection {
        status,
        message: message.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{candidate, request};

    fn ids(ordered: &[&Candidate]) -> Vec<String> {
        ordered.iter().map(|c| c.id.clone()).collect()
    }

    #[test]
    fn label_finds_value_by_key() {
        let c = candidate("w1")
            .with_label("version", "v2")
            .with_label("colour", "blue");
        assert_eq!(label(&c, "colour"), Some("blue"));
        assert_eq!(label(&c, "zone"), None);
    }

    #[test]
    fn by_score_orders_ascending_then_by_in_flight_then_input_order() {
        let cs = [
            candidate("slow").with_score(3.0),
            candidate("busy").with_score(1.0).with_in_flight(5),
            candidate("idle").with_score(1.0).with_in_flight(1),
            candidate("tie").with_score(1.0).with_in_flight(1),
            candidate("best").with_score(0.5),
        ];
        assert_eq!(ids(&by_score(&cs)), ["best", "idle", "tie", "busy", "slow"]);
    }

    #[test]
    fn route_to_nothing_is_a_503() {
        let Decision::Reject(rejection) = route_to(&request(), []) else {
            panic!("expected a rejection");
        };
        assert_eq!(rejection.status, 503);
        assert!(
            rejection.message.contains("default"),
            "{}",
            rejection.message
        );
    }

    #[test]
    fn route_to_keeps_the_given_order() {
        let cs = [candidate("a"), candidate("b")];
        assert_eq!(
            route_to(&request(), cs.iter().rev()),
            Decision::Route(vec!["b".into(), "a".into()])
        );
    }
}
