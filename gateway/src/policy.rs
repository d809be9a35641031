//! The built-in routing policy: candidates in, an ordered failover list out.
//! Pure: randomness and the round-robin counter come from the caller.
//!
//! Every strategy first sets saturated workers (`spill_in_flight` or more
//! requests) behind the rest. `kv` and `approx` then order by `score::cost`,
//! or by load alone when the hot-spot guard trips; `least_load` picks by
//! power of two choices, own zone first; `round_robin` takes turns.

use rand::Rng;

use crate::candidates::Candidate;
use crate::config::{RoutingConfig, Strategy};
use crate::score;

pub use crate::score::Request;

pub fn order(
    mut candidates: Vec<Candidate>,
    request: &Request,
    config: &RoutingConfig,
    rng: &mut impl Rng,
    round_robin: usize,
) -> Vec<Candidate> {
    // Saturation counts this gateway's own requests, which it knows exactly;
    // reports lag by up to a probe or debounce interval.
    let saturated = |c: &Candidate| c.in_flight >= config.spill_in_flight;
    match config.strategy {
        Strategy::Kv | Strategy::Approx => {
            let by_load = score::hot_spot(&candidates, config);
            let mut keyed: Vec<_> = candidates
                .into_iter()
                .map(|c| {
                    let cost = if by_load {
                        f64::from(c.active())
                    } else {
                        score::cost(&c, request, config)
                    };
                    // The random key breaks ties, so equal workers share the traffic.
                    (saturated(&c), cost, rng.random::<u32>(), c)
                })
                .collect();
            keyed.sort_by(|a, b| {
                (a.0, a.1, a.2)
                    .partial_cmp(&(b.0, b.1, b.2))
                    .expect("costs are finite")
            });
            keyed.into_iter().map(|k| k.3).collect()
        }
        Strategy::LeastLoad => least_load(candidates, config.spill_in_flight, rng),
        Strategy::RoundRobin => {
            candidates.sort_by(|a, b| a.worker.id.cmp(&b.worker.id));
            if !candidates.is_empty() {
                let n = candidates.len();
                candidates.rotate_left(round_robin % n);
            }
            candidates
        }
    }
}

/// Own zone first, least in-flight by power of two choices, spilling to other
/// zones when the local workers are saturated.
fn least_load(
    mut candidates: Vec<Candidate>,
    spill_in_flight: u32,
    rng: &mut impl Rng,
) -> Vec<Candidate> {
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
    // Two random choices instead of the minimum: near least-loaded, without the
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
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::tests::cand;
    use rand::SeedableRng;

    fn ids(order: &[Candidate]) -> Vec<&str> {
        order.iter().map(|c| c.worker.id.as_str()).collect()
    }

    fn config(strategy: Strategy, spill_in_flight: u32) -> RoutingConfig {
        RoutingConfig {
            strategy,
            spill_in_flight,
            ..RoutingConfig::default()
        }
    }

    const REQ: Request = Request {
        prompt_blocks: 8,
        block_size: 16,
        most_held_blocks: 0,
    };

    #[test]
    fn least_load_prefers_local_zone_then_spills() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let c = config(Strategy::LeastLoad, 10);
        let o = order(
            vec![cand("r", false, 0, 0), cand("l", true, 5, 0)],
            &REQ,
            &c,
            &mut rng,
            0,
        );
        assert_eq!(ids(&o), ["l", "r"]);
        let o = order(
            vec![cand("r", false, 3, 0), cand("l", true, 10, 0)],
            &REQ,
            &c,
            &mut rng,
            0,
        );
        assert_eq!(ids(&o), ["r", "l"], "saturated local spills to remote");
        let o = order(
            vec![cand("r", false, 12, 0), cand("l", true, 10, 0)],
            &REQ,
            &c,
            &mut rng,
            0,
        );
        assert_eq!(ids(&o), ["l", "r"], "all saturated: local first again");
    }

    #[test]
    fn two_choices_never_pick_the_most_loaded() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let c = config(Strategy::LeastLoad, 100);
        for _ in 0..200 {
            let cands = vec![
                cand("a", true, 1, 0),
                cand("b", true, 2, 0),
                cand("c", true, 3, 0),
            ];
            let o = order(cands, &REQ, &c, &mut rng, 0);
            assert_ne!(o[0].worker.id, "c");
            assert_eq!(o.len(), 3);
        }
    }

    #[test]
    fn equals_share_the_traffic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for strategy in [Strategy::LeastLoad, Strategy::Kv] {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..100 {
                let cands = vec![
                    cand("a", true, 0, 0),
                    cand("b", true, 0, 0),
                    cand("c", true, 0, 0),
                ];
                seen.insert(
                    order(cands, &REQ, &config(strategy, 100), &mut rng, 0)[0]
                        .worker
                        .id
                        .clone(),
                );
            }
            assert_eq!(seen.len(), 3, "{strategy:?}");
        }
    }

    #[test]
    fn kv_follows_the_cached_prefix_unless_it_is_a_hot_spot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let c = config(Strategy::Kv, 100);
        let o = order(
            vec![cand("cold", true, 0, 0), cand("warm", true, 2, 7)],
            &REQ,
            &c,
            &mut rng,
            0,
        );
        assert_eq!(ids(&o), ["warm", "cold"]);
        // The holder is swamped: load decides.
        let o = order(
            vec![cand("cold", true, 0, 0), cand("warm", true, 40, 8)],
            &REQ,
            &c,
            &mut rng,
            0,
        );
        assert_eq!(ids(&o), ["cold", "warm"]);
        // A remote holder of the whole prompt beats an empty local worker.
        let o = order(
            vec![cand("local", true, 0, 0), cand("remote", false, 0, 8)],
            &REQ,
            &c,
            &mut rng,
            0,
        );
        assert_eq!(ids(&o), ["remote", "local"]);
    }

    #[test]
    fn round_robin_takes_turns() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let c = config(Strategy::RoundRobin, 100);
        let firsts: Vec<String> = (0..4)
            .map(|i| {
                let cands = vec![
                    cand("b", true, 0, 0),
                    cand("a", true, 9, 0),
                    cand("c", true, 0, 0),
                ];
                order(cands, &REQ, &c, &mut rng, i)[0].worker.id.to_string()
            })
            .collect();
        assert_eq!(firsts, ["a", "b", "c", "a"]);
    }

    #[test]
    fn empty_gives_empty() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        for strategy in [Strategy::Kv, Strategy::LeastLoad, Strategy::RoundRobin] {
            assert!(order(Vec::new(), &REQ, &config(strategy, 1), &mut rng, 0).is_empty());
        }
    }
}
