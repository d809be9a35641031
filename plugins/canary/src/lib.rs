//! Canary policy: a weighted split by version label (or by engine), sticky per session, the other side as failover tail.
//!
//! A request with a session key lands on the same side every time (see
//! [`policy_sdk::sticky_fraction`]); one without a key draws from the host's
//! random numbers. The chosen side's workers come first by score, then the
//! other side's, so a broken canary still serves, and a side with no worker
//! sends its share to the other. Workers labelled with neither version get no
//! traffic: a third version being staged must not receive users unasked.
//!
//! Config (JSON):
//! - `stable` (required): the label value of the current version, e.g. `"v1"`.
//! - `canary` (required): the label value of the new version, e.g. `"v2"`.
//! - `canary_percent` (required): the share of traffic, 0 to 100, for the
//!   canary; fractions allowed (`0.5`). Raising it only moves users from
//!   stable to canary, never back.
//! - `label`: the worker label holding the version. Default: `"version"`.
//! - `by`: `"label"` (default) splits by that label; `"engine"` splits by
//!   the kind of server instead, `stable` and `canary` naming engines: a
//!   fleet moving from llama.cpp to vLLM sends `canary_percent` of its
//!   traffic to `"vllm"` workers and the rest to `"llamacpp"` ones.
//! - `stable_tenants`: tenants (of the gateway's API keys) whose requests
//!   always go to stable first, a customer under a contract, say: they
//!   never try the canary while stable can serve. Default none.

#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use policy_sdk::host::{self, Level};
use policy_sdk::{
    by_score, config, random_fraction, reject, route_to, sticky_fraction, Candidate, Decision,
    Deserialize, Policy, Request,
};

#[derive(Debug, Deserialize)]
#[serde(crate = "policy_sdk::serde", deny_unknown_fields)]
struct RawConfig {
    stable: String,
    canary: String,
    canary_percent: f64,
    #[serde(default = "default_label")]
    label: String,
    #[serde(default)]
    by: By,
    #[serde(default)]
    stable_tenants: Vec<String>,
}

/// What tells a worker's side.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
#[serde(crate = "policy_sdk::serde", rename_all = "lowercase")]
enum By {
    #[default]
    Label,
    Engine,
}

fn default_label() -> String {
    "version".to_string()
}

pub struct Canary {
    label: String,
    by: By,
    stable: String,
    canary: String,
    /// `canary_percent` as a fraction in [0, 1].
    canary_share: f64,
    stable_tenants: Vec<String>,
}

impl Canary {
    /// Whether this request's point falls in the canary's share; never
    /// for a tenant kept on stable.
    fn picks_canary(&self, request: &Request) -> bool {
        if let Some(tenant) = host::request_caller().tenant {
            if self.stable_tenants.contains(&tenant) {
                return false;
            }
        }
        let point = match &request.session_key {
            // Keyed by the canary version too, so each rollout samples a
            // different set of users instead of the same early few every time.
            Some(key) => sticky_fraction(&format!("{}\n{key}", self.canary)),
            None => random_fraction(),
        };
        point < self.canary_share
    }

    /// The version (or engine) `c` runs, if it says.
    fn side<'c>(&self, c: &Candidate<'c>) -> Option<&'c str> {
        match self.by {
            By::Label => c.label(&self.label),
            By::Engine => Some(c.engine.name()),
        }
    }

    /// What the split is by, for messages.
    fn key(&self) -> &str {
        match self.by {
            By::Label => &self.label,
            By::Engine => "engine",
        }
    }
}

impl Policy for Canary {
    fn init(config: &str) -> Result<Self, String> {
        let raw: RawConfig = config::parse(config)?;
        let mut problems = Vec::new();
        if raw.label.is_empty() {
            problems.push("label: must name a worker label".to_string());
        }
        if raw.stable.is_empty() {
            problems.push("stable: must name a version".to_string());
        }
        if raw.canary.is_empty() {
            problems.push("canary: must name a version".to_string());
        }
        if !raw.stable.is_empty() && raw.stable == raw.canary {
            problems.push(format!(
                "canary: must differ from stable, both are {:?}",
                raw.stable
            ));
        }
        if !(0.0..=100.0).contains(&raw.canary_percent) {
            problems.push(format!(
                "canary_percent: must be between 0 and 100, got {}",
                raw.canary_percent
            ));
        }
        config::check(problems)?;
        host::log(
            Level::Debug,
            &format!(
                "canary: {}% of traffic to {}={}, the rest to {}",
                raw.canary_percent,
                if raw.by == By::Engine {
                    "engine"
                } else {
                    &raw.label
                },
                raw.canary,
                raw.stable
            ),
        );
        Ok(Self {
            label: raw.label,
            by: raw.by,
            stable: raw.stable,
            canary: raw.canary,
            canary_share: raw.canary_percent / 100.0,
            stable_tenants: raw.stable_tenants,
        })
    }

    fn route(&self, request: &Request, candidates: &[Candidate<'_>]) -> Decision {
        let chosen = if self.picks_canary(request) {
            &self.canary
        } else {
            &self.stable
        };
        let mut ordered = by_score(candidates);
        ordered.retain(|c| {
            self.side(c)
                .is_some_and(|v| v == self.stable || v == self.canary)
        });
        if ordered.is_empty() {
            return reject(
                503,
                format!(
                    "no routable worker with {label}={} or {label}={} in pool {:?}",
                    self.stable,
                    self.canary,
                    request.pool,
                    label = self.key()
                ),
            );
        }
        // Stable: score order holds within each side; an empty chosen side
        // simply leaves the other side first.
        ordered.sort_by_cached_key(|c| self.side(c) != Some(chosen.as_str()));
        route_to(request, ordered)
    }
}

policy_sdk::export_policy!(Canary);

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use policy_sdk::testing::{self, candidate, request, TestCandidate};
    use policy_sdk::{Engine, Rejection};

    fn policy(percent: f64) -> Canary {
        Canary::init(&format!(
            r#"{{"stable": "v1", "canary": "v2", "canary_percent": {percent}}}"#
        ))
        .unwrap()
    }

    fn pool() -> Vec<TestCandidate> {
        vec![
            candidate("v1-slow")
                .with_label("version", "v1")
                .with_score(2.0),
            candidate("v2-a")
                .with_label("version", "v2")
                .with_score(1.0),
            candidate("v1-fast")
                .with_label("version", "v1")
                .with_score(1.0),
            candidate("v3").with_label("version", "v3").with_score(0.1),
            candidate("v2-b")
                .with_label("version", "v2")
                .with_score(0.5),
        ]
    }

    fn route(
        policy: &Canary,
        request: &Request,
        candidates: &[TestCandidate],
    ) -> Result<Vec<String>, Rejection> {
        testing::route(policy, request, candidates)
    }

    fn first(policy: &Canary, request: &Request) -> String {
        route(policy, request, &pool()).unwrap().remove(0)
    }

    fn on_canary(policy: &Canary, session: &str) -> bool {
        first(policy, &request().with_session(session)).starts_with("v2")
    }

    #[test]
    fn a_tenant_kept_on_stable_never_tries_the_canary() {
        let policy = Canary::init(
            r#"{"stable": "v1", "canary": "v2", "canary_percent": 100, "stable_tenants": ["acme"]}"#,
        )
        .unwrap();
        let as_tenant = |tenant: &str| {
            host::set_request_caller(policy_sdk::Caller {
                tenant: Some(tenant.to_string()),
                priority: policy_sdk::Priority::Normal,
            });
            first(&policy, &request())
        };
        assert_eq!(as_tenant("acme"), "v1-fast");
        assert_eq!(as_tenant("other"), "v2-b");
    }

    #[test]
    fn splits_by_engine_when_asked() {
        let policy = Canary::init(
            r#"{"by": "engine", "stable": "llamacpp", "canary": "vllm", "canary_percent": 100}"#,
        )
        .unwrap();
        let pool = [
            candidate("cpp").on_engine(Engine::Llamacpp).with_score(0.1),
            candidate("ours").with_score(0.0),
            candidate("vllm").on_engine(Engine::Vllm).with_score(1.0),
        ];
        assert_eq!(route(&policy, &request(), &pool).unwrap(), ["vllm", "cpp"]);
    }

    #[test]
    fn chosen_side_by_score_then_other_side_by_score() {
        assert_eq!(
            route(&policy(0.0), &request(), &pool()).unwrap(),
            ["v1-fast", "v1-slow", "v2-b", "v2-a"]
        );
        assert_eq!(
            route(&policy(100.0), &request(), &pool()).unwrap(),
            ["v2-b", "v2-a", "v1-fast", "v1-slow"]
        );
    }

    #[test]
    fn a_session_always_lands_on_the_same_side() {
        let canary = policy(50.0);
        for session in ["alice", "bob", "carol"] {
            let side = on_canary(&canary, session);
            assert!(
                (0..20).all(|_| on_canary(&canary, session) == side),
                "{session}"
            );
        }
    }

    #[test]
    fn raising_the_percentage_only_moves_users_to_the_canary() {
        let (ten, twenty) = (policy(10.0), policy(20.0));
        let sessions: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let at_ten = sessions.iter().filter(|s| on_canary(&ten, s)).count();
        let at_twenty = sessions.iter().filter(|s| on_canary(&twenty, s)).count();
        assert!(sessions
            .iter()
            .all(|s| !on_canary(&ten, s) || on_canary(&twenty, s)));
        assert!((150..250).contains(&at_ten), "{at_ten}");
        assert!((320..480).contains(&at_twenty), "{at_twenty}");
    }

    #[test]
    fn requests_without_a_session_split_by_host_random() {
        host::seed_random(3);
        let canary = policy(10.0);
        let hits = (0..5000)
            .filter(|_| first(&canary, &request()).starts_with("v2"))
            .count();
        assert!((400..600).contains(&hits), "{hits}");
    }

    #[test]
    fn an_empty_side_sends_its_share_to_the_other() {
        let stable_only = [candidate("v1-a").with_label("version", "v1")];
        assert_eq!(
            route(&policy(100.0), &request(), &stable_only).unwrap(),
            ["v1-a"]
        );
    }

    #[test]
    fn workers_of_neither_version_get_nothing() {
        let others = [
            candidate("v3").with_label("version", "v3"),
            candidate("plain"),
        ];
        let rejection = route(&policy(50.0), &request(), &others).unwrap_err();
        assert_eq!(rejection.status, 503);
        assert!(
            rejection.message.contains("version=v2"),
            "{}",
            rejection.message
        );
    }
    #[test]
    fn bad_config_names_every_field_at_fault() {
        for (config, fields) in [
            (r#"{"canary": "v2", "canary_percent": 5}"#, &["stable"][..]),
            (r#"{"stable": "v1", "canary": "v2"}"#, &["canary_percent"]),
            (
                r#"{"stable": "v1", "canary": "v1", "canary_percent": 120}"#,
                &["canary:", "canary_percent"],
            ),
            (
                r#"{"stable": "v1", "canary": "v2", "canary_percent": "10"}"#,
                &["canary_percent"],
            ),
            (
                r#"{"stable": "v1", "canary": "v2", "canary_percent": 1, "weight": 2}"#,
                &["weight"],
            ),
            (
                r#"{"stable": "v1", "canary": "v2", "canary_percent": 1, "label": ""}"#,
                &["label"],
            ),
        ] {
            let error = Canary::init(config).err().expect(config);
            for field in fields {
                assert!(error.contains(field), "{config}: {error}");
            }
        }
    }
}
