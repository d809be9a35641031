//! Failover policy: the best workers of the gateway's own zone first, other zones as the tail.
//!
//! Config (JSON, every field optional):
//! - `max_workers`: how many workers the decision lists at most, so a request
//!   does not wander through the whole pool on a bad day. Default: no limit.

#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use policy_sdk::{by_score, config, route_to, Candidate, Decision, Deserialize, Policy, Request};

#[derive(Debug, Default, Deserialize)]
#[serde(crate = "policy_sdk::serde", deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    max_workers: Option<usize>,
}

pub struct Failover {
    max_workers: usize,
}

impl Policy for Failover {
    fn init(config: &str) -> Result<Self, String> {
        let raw: RawConfig = config::parse(config)?;
        let mut problems = Vec::new();
        if raw.max_workers == Some(0) {
            problems
                .push("max_workers: must be at least 1 (leave it out for no limit)".to_string());
        }
        config::check(problems)?;
        Ok(Self {
            max_workers: raw.max_workers.unwrap_or(usize::MAX),
        })
    }

    fn route(&self, request: &Request, candidates: &[Candidate<'_>]) -> Decision {
        // Score order holds within the local and the remote group. Remote
        // workers cost a cross-zone hop, so they only serve when every local
        // one has failed.
        let (local, remote): (Vec<_>, Vec<_>) = by_score(candidates)
            .into_iter()
            .partition(|c| c.zone == request.gateway_zone);
        route_to(
            request,
            local.into_iter().chain(remote).take(self.max_workers),
        )
    }
}

policy_sdk::export_policy!(Failover);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testing::{self, candidate, request, TestCandidate};
    use policy_sdk::Rejection;

    fn route(
        config: &str,
        request: &Request,
        candidates: &[TestCandidate],
    ) -> Result<Vec<String>, Rejection> {
        testing::route(&Failover::init(config).unwrap(), request, candidates)
    }

    #[test]
    fn local_zone_by_score_then_other_zones_by_score() {
        let candidates = [
            candidate("b-best").in_zone("b").with_score(0.1),
            candidate("a-worse").in_zone("a").with_score(2.0),
            candidate("c-mid").in_zone("c").with_score(1.0),
            candidate("a-better").in_zone("a").with_score(1.5),
        ];
        assert_eq!(
            route("{}", &request().in_zone("a"), &candidates).unwrap(),
            ["a-better", "a-worse", "b-best", "c-mid"]
        );
    }

    #[test]
    fn no_local_worker_means_other_zones_by_score() {
        let candidates = [
            candidate("c1").in_zone("c").with_score(3.0),
            candidate("b1").in_zone("b").with_score(1.0),
        ];
        assert_eq!(
            route("", &request().in_zone("a"), &candidates).unwrap(),
            ["b1", "c1"]
        );
    }

    #[test]
    fn max_workers_cuts_the_tail() {
        let candidates = [
            candidate("b1").in_zone("b"),
            candidate("a1").with_score(2.0),
            candidate("a2").with_score(1.0),
        ];
        assert_eq!(
            route(r#"{"max_workers": 2}"#, &request(), &candidates).unwrap(),
            ["a2", "a1"]
        );
    }

    #[test]
    fn no_candidates_is_a_503() {
        assert_eq!(route("{}", &request(), &[]).unwrap_err().status, 503);
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, field) in [
            (r#"{"max_workers": 0}"#, "max_workers"),
            (r#"{"max_workers": -1}"#, "max_workers"),
            (r#"{"max_worker": 3}"#, "max_worker"),
        ] {
            let error = Failover::init(config).err().expect(config);
            assert!(error.contains(field), "{config}: {error}");
        }
    }
}
