//! The built-in routing policy: own zone first, least in-flight by power of two
//! choices, spill to other zones when the local workers are saturated. Pure:
//! candidates and randomness in, an ordered failover list out.

use std::sync::Arc;

use rand::Rng;

use crate::candidates::Candidate;
use crate::pools::Worker;

/// Orders `candidates` for one request: the chosen worker first, then the rest
/// as failover targets. A worker at `spill_in_flight` or more is saturated.
pub fn order(
    mut candidates: Vec<Candidate>,
    spill_in_flight: u32,
    rng: &mut impl Rng,
) -> Vec<Arc<Worker>> {
    // Tiers: local free, remote free, local saturated, remote saturated.
    let tier = |c: &Candidate| (u8::from(c.in_flight >= spill_in_flight) << 1) | u8::from(!c.local);
    candidates.sort_by_key(|c| (tier(c), c.in_flight));
    let Some(first) = candidates.first() else {
        return Vec::new();
    };
    let best_tier = tier(first);
    let tier_len = candidates
        .iter()
        .take_while(|c| tier(c) == best_tier)
        .count();
    // Power of two choices inside the best tier: near least-loaded, without the
    // herd that always picking the minimum causes across many gateways.
    if tier_len > 1 {
        let a = rng.random_range(0..tier_len);
        let b = (a + rng.random_range(1..tier_len)) % tier_len;
        let pick = if candidates[b].in_flight < candidates[a].in_flight {
            b
        } else {
            a
        };
        let chosen = candidates.remove(pick);
        candidates.insert(0, chosen);
    }
    candidates.into_iter().map(|c| c.worker).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerConfig;
    use rand::SeedableRng;

    fn cand(id: &str, local: bool, in_flight: u32) -> Candidate {
        let worker = Worker::new(
            id.into(),
            "p".into(),
            "http://127.0.0.1:1".parse().unwrap(),
            if local { "a" } else { "b" }.into(),
            Default::default(),
            &BreakerConfig::default(),
        );
        Candidate {
            worker: Arc::new(worker),
            local,
            in_flight,
        }
    }

    fn ids(order: &[Arc<Worker>]) -> Vec<&str> {
        order.iter().map(|w| w.id.as_str()).collect()
    }

    #[test]
    fn prefers_local_zone_then_spills() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let o = order(vec![cand("r", false, 0), cand("l", true, 5)], 10, &mut rng);
        assert_eq!(ids(&o), ["l", "r"]);
        let o = order(vec![cand("r", false, 3), cand("l", true, 10)], 10, &mut rng);
        assert_eq!(ids(&o), ["r", "l"], "saturated local spills to remote");
        let o = order(
            vec![cand("r", false, 12), cand("l", true, 10)],
            10,
            &mut rng,
        );
        assert_eq!(ids(&o), ["l", "r"], "all saturated: local first again");
    }

    #[test]
    fn two_choices_never_pick_the_most_loaded() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let o = order(
                vec![cand("a", true, 1), cand("b", true, 2), cand("c", true, 3)],
                100,
                &mut rng,
            );
            assert_ne!(o[0].id, "c");
            assert_eq!(o.len(), 3);
        }
    }

    #[test]
    fn spreads_among_equals() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let o = order(
                vec![cand("a", true, 0), cand("b", true, 0), cand("c", true, 0)],
                100,
                &mut rng,
            );
            seen.insert(o[0].id.clone());
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn empty_gives_empty() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert!(order(Vec::new(), 1, &mut rng).is_empty());
    }
}
