//! Shared steps of a policy: order by the built-in score, build the decision.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::{Candidate, Decision, Rejection, Request};

/// Candidates from best to worst by the built-in score (lower is better),
/// ties broken by fewer requests in flight.
///
/// The sort is stable, so full ties keep the gateway's order and a policy that
/// re-sorts the result by a tier with a stable sort keeps score order within
/// each tier.
pub fn by_score<'c, 'w>(candidates: &'c [Candidate<'w>]) -> Vec<&'c Candidate<'w>> {
    // Sorting plain integer keys, the input position last, is several times
    // faster than comparing candidates through references, and as stable.
    let mut keys: Vec<(i64, u32, u32)> = candidates
        .iter()
        .zip(0..)
        .map(|(c, i)| (total_order(c.score), c.load.in_flight, i))
        .collect();
    keys.sort_unstable();
    keys.into_iter()
        .map(|(_, _, i)| &candidates[i as usize])
        .collect()
}

/// `score` as an integer in the order of `f64::total_cmp`, so even a NaN
/// cannot make the sort panic or shuffle inconsistently inside the guest.
fn total_order(score: f64) -> i64 {
    let bits = score.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

/// Routes to `ordered` in that order, or rejects with 503 when it is empty:
/// an empty route list is not a decision the gateway can act on.
pub fn route_to<'c, 'w: 'c>(
    request: &Request,
    ordered: impl IntoIterator<Item = &'c Candidate<'w>>,
) -> Decision {
    let positions: Vec<u32> = ordered.into_iter().map(Candidate::position).collect();
    if positions.is_empty() {
        return reject(
            503,
            format!("no routable worker in pool {:?}", request.pool),
        );
    }
    Decision::Route(positions)
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
    use crate::testing::{candidate, request, route, TestCandidate};
    use crate::Policy;

    /// Routes by `by_score`, or to the candidates in reverse.
    struct Ordered {
        reverse: bool,
    }

    impl Policy for Ordered {
        fn init(config: &str) -> Result<Self, String> {
            Ok(Self {
                reverse: config == "reverse",
            })
        }

        fn route(&self, request: &Request, candidates: &[Candidate<'_>]) -> Decision {
            if self.reverse {
                route_to(request, candidates.iter().rev())
            } else {
                route_to(request, by_score(candidates))
            }
        }
    }

    fn ask(config: &str, candidates: &[TestCandidate]) -> Result<Vec<String>, Rejection> {
        route(&Ordered::init(config).unwrap(), &request(), candidates)
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
        assert_eq!(
            ask("", &cs).unwrap(),
            ["best", "idle", "tie", "busy", "slow"]
        );
    }

    #[test]
    fn by_score_follows_total_cmp() {
        let scores = [
            f64::NAN,
            1.5,
            -0.0,
            0.0,
            f64::INFINITY,
            -2.0,
            f64::NEG_INFINITY,
        ];
        let mut expected = scores;
        expected.sort_by(f64::total_cmp);
        let mut keyed = scores;
        keyed.sort_by_key(|&s| total_order(s));
        assert_eq!(keyed.map(f64::to_bits), expected.map(f64::to_bits));
    }

    #[test]
    fn route_to_nothing_is_a_503() {
        let rejection = ask("", &[]).unwrap_err();
        assert_eq!(rejection.status, 503);
        assert!(
            rejection.message.contains("default"),
            "{}",
            rejection.message
        );
    }

    #[test]
    fn route_to_keeps_the_given_order() {
        let cs = [candidate("a"), candidate("b"), candidate("c")];
        assert_eq!(ask("reverse", &cs).unwrap(), ["c", "b", "a"]);
    }
}
