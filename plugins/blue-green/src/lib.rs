//! Blue-green policy: all new traffic to the active colour; flipping `active` moves it at once.
//!
//! Requests already streaming finish on the worker they started on: the
//! gateway asks the policy only when a request arrives.
//!
//! Config (JSON):
//! - `active` (required): the colour that serves, e.g. `"blue"`.
//! - `label`: the worker label holding the colour. Default: `"colour"`.
//! - `fallback`: when true, workers of any other colour (or none) follow the
//!   active ones as a failover tail; when false, no active worker means 503.
//!   Default: `false`, so the inactive side never sees traffic unasked.

#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use policy_sdk::{
    by_score, config, reject, route_to, Candidate, Decision, Deserialize, Policy, Request,
};

#[derive(Debug, Deserialize)]
#[serde(crate = "policy_sdk::serde", deny_unknown_fields)]
struct RawConfig {
    active: String,
    #[serde(default = "default_label")]
    label: String,
    #[serde(default)]
    fallback: bool,
}

fn default_label() -> String {
    "colour".to_string()
}

pub struct BlueGreen {
    label: String,
    active: String,
    fallback: bool,
}

impl BlueGreen {
    fn is_active(&self, candidate: &Candidate<'_>) -> bool {
        candidate.label(&self.label) == Some(self.active.as_str())
    }
}

impl Policy for BlueGreen {
    fn init(config: &str) -> Result<Self, String> {
        let raw: RawConfig = config::parse(config)?;
        let mut problems = Vec::new();
        if raw.active.is_empty() {
            problems.push("active: must name a colour".to_string());
        }
        if raw.label.is_empty() {
            problems.push("label: must name a worker label".to_string());
        }
        config::check(problems)?;
        Ok(Self {
            label: raw.label,
            active: raw.active,
            fallback: raw.fallback,
        })
    }

    fn route(&self, request: &Request, candidates: &[Candidate<'_>]) -> Decision {
        let mut ordered = by_score(candidates);
        if !ordered.iter().any(|c| self.is_active(c)) && !self.fallback {
            return reject(
                503,
                format!(
                    "no routable worker with {}={} in pool {:?}, and fallback is off",
                    self.label, self.active, request.pool
                ),
            );
        }
        if self.fallback {
            // Stable: score order holds within the active and the other side.
            ordered.sort_by_cached_key(|c| !self.is_active(c));
        } else {
            ordered.retain(|c| self.is_active(c));
        }
        route_to(request, ordered)
    }
}

policy_sdk::export_policy!(BlueGreen);

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use policy_sdk::testing::{self, candidate, request, TestCandidate};
    use policy_sdk::Rejection;

    fn pool() -> Vec<TestCandidate> {
        vec![
            candidate("blue-slow")
                .with_label("colour", "blue")
                .with_score(2.0),
            candidate("green-1")
                .with_label("colour", "green")
                .with_score(0.5),
            candidate("blue-fast")
                .with_label("colour", "blue")
                .with_score(1.0),
            candidate("plain").with_score(0.1),
        ]
    }

    fn route(config: &str, candidates: &[TestCandidate]) -> Result<Vec<String>, Rejection> {
        testing::route(&BlueGreen::init(config).unwrap(), &request(), candidates)
    }

    #[test]
    fn only_the_active_colour_by_score() {
        assert_eq!(
            route(r#"{"active": "blue"}"#, &pool()).unwrap(),
            ["blue-fast", "blue-slow"]
        );
    }

    #[test]
    fn flipping_active_moves_all_traffic() {
        assert_eq!(
            route(r#"{"active": "green"}"#, &pool()).unwrap(),
            ["green-1"]
        );
    }

    #[test]
    fn fallback_puts_everything_else_at_the_tail() {
        assert_eq!(
            route(r#"{"active": "blue", "fallback": true}"#, &pool()).unwrap(),
            ["blue-fast", "blue-slow", "plain", "green-1"]
        );
    }

    #[test]
    fn fallback_serves_when_the_active_colour_is_gone() {
        let green_only = [candidate("green-1").with_label("colour", "green")];
        assert_eq!(
            route(r#"{"active": "blue", "fallback": true}"#, &green_only).unwrap(),
            ["green-1"]
        );
    }

    #[test]
    fn no_active_worker_without_fallback_is_a_503_naming_the_colour() {
        let green_only = [candidate("green-1").with_label("colour", "green")];
        let rejection = route(r#"{"active": "blue"}"#, &green_only).unwrap_err();
        assert_eq!(rejection.status, 503);
        assert!(
            rejection.message.contains("colour=blue"),
            "{}",
            rejection.message
        );
    }

    #[test]
    fn custom_label() {
        let candidates = [
            candidate("x").with_label("slot", "b"),
            candidate("y").with_label("slot", "a"),
        ];
        assert_eq!(
            route(r#"{"label": "slot", "active": "a"}"#, &candidates).unwrap(),
            ["y"]
        );
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, field) in [
            ("{}", "active"),
            (r#"{"active": ""}"#, "active"),
            (r#"{"active": "blue", "label": ""}"#, "label"),
            (r#"{"active": "blue", "fallback": "yes"}"#, "fallback"),
            (r#"{"active": "blue", "color": "x"}"#, "color"),
        ] {
            let error = BlueGreen::init(config).err().expect(config);
            assert!(error.contains(field), "{config}: {error}");
        }
    }
}
