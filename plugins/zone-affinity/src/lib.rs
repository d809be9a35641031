//! Zone-affinity policy: stay in the gateway's zone until its workers are saturated, then spill.
//!
//! Order: local workers below the threshold (by score), then other zones'
//! workers below it (by score), then the saturated ones (by score), which
//! still serve rather than fail the request.
//!
//! Config (JSON, every field optional):
//! - `spill_in_flight`: a worker with this many requests or more is saturated.
//!   Its load is the gateway's in-flight count, or the worker's own running
//!   count when reported and larger (other gateway replicas send it work too).
//!   Default: 32.

#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use policy_sdk::{by_score, config, route_to, Candidate, Decision, Deserialize, Policy, Request};

#[derive(Debug, Deserialize)]
#[serde(crate = "policy_sdk::serde", deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_spill_in_flight")]
    spill_in_flight: u32,
}

fn default_spill_in_flight() -> u32 {
    32
}

pub struct ZoneAffinity {
    spill_in_flight: u32,
}

impl ZoneAffinity {
    /// 0: local and below the threshold, 1: remote and below it, 2: saturated.
    fn tier(&self, request: &Request, candidate: &Candidate<'_>) -> u8 {
        let load = candidate
            .load
            .in_flight
            .max(candidate.load.running.unwrap_or(0));
        if load >= self.spill_in_flight {
            2
        } else if candidate.zone == request.gateway_zone {
            0
        } else {
            1
        }
    }
}

impl Policy for ZoneAffinity {
    fn init(config: &str) -> Result<Self, String> {
        let raw: RawConfig = config::parse(config)?;
        let mut problems = Vec::new();
        if raw.spill_in_flight == 0 {
            problems.push("spill_in_flight: must be at least 1".to_string());
        }
        config::check(problems)?;
        Ok(Self {
            spill_in_flight: raw.spill_in_flight,
        })
    }

    fn route(&self, request: &Request, candidates: &[Candidate<'_>]) -> Decision {
        let mut ordered = by_score(candidates);
        // Stable: score order holds within each tier.
        ordered.sort_by_cached_key(|c| self.tier(request, c));
        route_to(request, ordered)
    }
}

policy_sdk::export_policy!(ZoneAffinity);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testing::{self, candidate, request, TestCandidate};

    fn route(config: &str, candidates: &[TestCandidate]) -> Vec<String> {
        let policy = ZoneAffinity::init(config).unwrap();
        testing::route(&policy, &request().in_zone("a"), candidates).unwrap()
    }

    #[test]
    fn local_then_remote_then_saturated_each_by_score() {
        let candidates = [
            candidate("a-full")
                .in_zone("a")
                .with_in_flight(4)
                .with_score(0.2),
            candidate("b-ok").in_zone("b").with_score(0.1),
            candidate("a-ok-worse").in_zone("a").with_score(2.0),
            candidate("c-full")
                .in_zone("c")
                .with_in_flight(9)
                .with_score(0.0),
            candidate("a-ok")
                .in_zone("a")
                .with_score(1.0)
                .with_in_flight(3),
            candidate("c-ok").in_zone("c").with_score(0.5),
        ];
        assert_eq!(
            route(r#"{"spill_in_flight": 4}"#, &candidates),
            ["a-ok", "a-ok-worse", "b-ok", "c-ok", "c-full", "a-full"]
        );
    }

    #[test]
    fn running_counts_when_larger_than_in_flight() {
        let candidates = [
            candidate("a-busy-elsewhere")
                .with_in_flight(1)
                .with_running(40),
            candidate("b-idle")
                .in_zone("b")
                .with_score(5.0)
                .with_running(0),
        ];
        assert_eq!(route("{}", &candidates), ["b-idle", "a-busy-elsewhere"]);
    }

    #[test]
    fn default_threshold_is_32() {
        let candidates = [
            candidate("a-31").with_in_flight(31),
            candidate("b-0").in_zone("b"),
        ];
        assert_eq!(route("", &candidates), ["a-31", "b-0"]);
        let candidates = [
            candidate("a-32").with_in_flight(32),
            candidate("b-0").in_zone("b"),
        ];
        assert_eq!(route("", &candidates), ["b-0", "a-32"]);
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, field) in [
            (r#"{"spill_in_flight": 0}"#, "spill_in_flight"),
            (r#"{"spill_in_flight": 1.5}"#, "spill_in_flight"),
            (r#"{"spill": 3}"#, "spill"),
        ] {
            let error = ZoneAffinity::init(config).err().expect(config);
            assert!(error.contains(field), "{config}: {error}");
        }
    }
}
