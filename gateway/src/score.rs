//! The built-in cost of sending a request to each candidate, in the spirit of
//! Dynamo's KV router: the prompt blocks the worker would still have to
//! prefill (its cached prefix is free), the prefill already queued there, the
//! requests it is serving, and a cost for leaving the gateway's zone. Pure.

use crate::candidates::Candidate;
use crate::config::RoutingConfig;

/// Lower is better.
pub fn cost(c: &Candidate, prompt_blocks: usize, block_size: usize, w: &RoutingConfig) -> f64 {
    let uncached = prompt_blocks.saturating_sub(c.overlap_blocks as usize) as f64;
    let queued = c.queued_prefill() as f64 / block_size.max(1) as f64;
    let zone = if c.local { 0.0 } else { w.remote_zone_cost };
    w.prefill_weight * (uncached + queued) + w.decode_weight * f64::from(c.active()) + zone
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
            pending_prefill: 0,
        }
    }

    #[test]
    fn cached_prefix_is_free() {
        let w = RoutingConfig::default();
        let hit = cost(&cand("a", true, 0, 10), 12, 16, &w);
        let miss = cost(&cand("b", true, 0, 0), 12, 16, &w);
        assert_eq!(hit, 2.0 * w.prefill_weight);
        assert!(hit < miss);
    }

    #[test]
    fn load_and_zone_add_cost() {
        let w = RoutingConfig::default();
        let idle = cost(&cand("a", true, 0, 0), 4, 16, &w);
        assert!(cost(&cand("b", true, 3, 0), 4, 16, &w) > idle);
        assert!(cost(&cand("c", false, 0, 0), 4, 16, &w) > idle);
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
