//! The built-in cost of sending a request to each candidate, in the spirit of
//! Dynamo's KV router: the prompt blocks the worker would still have to
//! prefill (its cached prefix is free), the prefill already queued there, the
//! requests it is serving, a cost for leaving the gateway's zone, and, so
//! that new prefixes spread over the pool's caches, how full its cache is
//! next to the fullest candidate's. Pure.

use crate::candidates::Candidate;
use crate::config::RoutingConfig;

/// What a request brings to the decision besides its candidates.
pub struct Request {
    pub prompt_blocks: usize,
    pub block_size: usize,
    /// The most blocks any candidate holds in cache.
    pub most_held_blocks: usize,
}

impl Request {
    pub fn new(prompt_blocks: usize, block_size: usize, candidates: &[Candidate]) -> Request {
        Request {
            prompt_blocks,
            block_size,
            most_held_blocks: candidates.iter().map(|c| c.held_blocks).max().unwrap_or(0),
        }
    }
}

/// Lower is better.
pub fn cost(c: &Candidate, request: &Request, w: &RoutingConfig) -> f64 {
    let uncached = request
        .prompt_blocks
        .saturating_sub(c.overlap_blocks as usize) as f64;
    let queued = c.queued_prefill() as f64 / request.block_size.max(1) as f64;
    let zone = if c.local { 0.0 } else { w.remote_zone_cost };
    // At most `cache_room_weight` blocks: among otherwise equal candidates
    // the emptiest cache wins, and it never outweighs a cached prefix.
    let fullness = match request.most_held_blocks {
        0 => 0.0,
        most => c.held_blocks as f64 / most as f64,
    };
    w.prefill_weight * (uncached + queued)
        + w.decode_weight * f64::from(c.active())
        + zone
        + w.cache_room_weight * fullness
}

/// The hot-spot guard: true when load is so uneven (a popular prefix pulling
/// everything to its holder) that this request should go by load alone.
pub fn hot_spot(candidates: &[Candidate], w: &RoutingConfig) -> bool {
    let loads = candidates.iter().map(Candidate::active);
    let (Some(min), Some(max)) = (loads.clone().min(), loads.max()) else {
        return false;
    };
    max - min > w.balance_abs_threshold && f64::from(max) > w.balance_rel_threshold * f64::from(min)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::worker::tests::worker;

    pub(crate) fn cand(id: &str, local: bool, in_flight: u32, overlap: u32) -> Candidate {
        Candidate {
            worker: worker(id, if local { "a" } else { "b" }),
            local,
            in_flight,
            load: None,
            overlap_blocks: overlap,
            held_blocks: 0,
            pending_prefill: 0,
        }
    }

    fn req(prompt_blocks: usize) -> Request {
        Request {
            prompt_blocks,
            block_size: 16,
            most_held_blocks: 0,
        }
    }

    #[test]
    fn an_emptier_cache_wins_only_among_equals() {
        let w = RoutingConfig::default();
        let (mut empty, mut full, mut warm) = (
            cand("empty", true, 0, 0),
            cand("full", true, 0, 0),
            cand("warm", true, 0, 2),
        );
        (empty.held_blocks, full.held_blocks, warm.held_blocks) = (10, 500, 500);
        let request = Request::new(8, 16, &[empty.clone(), full.clone(), warm.clone()]);
        assert_eq!(request.most_held_blocks, 500);
        assert!(cost(&empty, &request, &w) < cost(&full, &request, &w));
        // Two cached blocks outweigh the fullest cache.
        assert!(cost(&warm, &request, &w) < cost(&empty, &request, &w));
    }

    #[test]
    fn cached_prefix_is_free() {
        let w = RoutingConfig::default();
        let hit = cost(&cand("a", true, 0, 10), &req(12), &w);
        let miss = cost(&cand("b", true, 0, 0), &req(12), &w);
        assert_eq!(hit, 2.0 * w.prefill_weight);
        assert!(hit < miss);
    }

    #[test]
    fn load_and_zone_add_cost() {
        let w = RoutingConfig::default();
        let idle = cost(&cand("a", true, 0, 0), &req(4), &w);
        assert!(cost(&cand("b", true, 3, 0), &req(4), &w) > idle);
        assert!(cost(&cand("c", false, 0, 0), &req(4), &w) > idle);
    }

    #[test]
    fn hot_spot_needs_both_thresholds() {
        let w = RoutingConfig {
            balance_abs_threshold: 4,
            balance_rel_threshold: 2.0,
            ..Default::default()
        };
        assert!(hot_spot(
            &[cand("a", true, 10, 0), cand("b", true, 1, 0)],
            &w
        ));
        assert!(
            !hot_spot(&[cand("a", true, 10, 0), cand("b", true, 7, 0)], &w),
            "relative gap too small"
        );
        assert!(
            !hot_spot(&[cand("a", true, 3, 0), cand("b", true, 0, 0)], &w),
            "absolute gap too small"
        );
    }
}
