//! Builders of requests and candidates for policy unit tests (feature
//! `testing`), and [`route`], which asks a policy the way a host does.
//!
//! Defaults: a healthy `llmgw` candidate in zone `a` with no labels, no
//! load, no overlap and score 0; a first-attempt request for model `m` in pool
//! `default` from a gateway in zone `a`, without a session key.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::bindings::llmgw::policy::types::{self, State};
use crate::{
    view, Caller, Decision, Engine, Health, Label, Load, Policy, Priority, Rejection, Request,
    Worker,
};

/// A candidate for a test: its worker and its figures, which a host sends apart.
#[derive(Debug, Clone)]
pub struct TestCandidate {
    pub(crate) worker: Worker,
    engine: Engine,
    health: Health,
    load: Load,
    overlap_blocks: u32,
    score: f64,
}

/// A healthy, idle candidate `id` in zone `a`.
pub fn candidate(id: &str) -> TestCandidate {
    TestCandidate {
        worker: Worker {
            id: id.to_string(),
            zone: "a".to_string(),
            labels: Vec::new(),
        },
        engine: Engine::Llmgw,
        health: Health::Healthy,
        load: Load {
            in_flight: 0,
            running: None,
            waiting: None,
            kv_blocks_used: None,
            kv_blocks_total: None,
        },
        overlap_blocks: 0,
        score: 0.0,
    }
}

/// A first-attempt request to pool `default` from a gateway in zone `a`.
pub fn request() -> Request {
    Request {
        model: "m".to_string(),
        pool: "default".to_string(),
        stream: false,
        prompt_tokens: 0,
        block_size: 16,
        session_key: None,
        headers: Vec::new(),
        gateway_zone: "a".to_string(),
        attempt: 1,
    }
}

/// Asks `policy` about `candidates` as a component is asked, and names the
/// workers its decision routes to, in order, or gives its rejection.
///
/// The workers go in a table in reverse order behind one that is no
/// candidate, so a worker's index never equals its candidate's position.
/// Panics on a decision a host would refuse (no worker, a position out of
/// range or listed twice, a rejection status outside 400..=599).
pub fn route<P: Policy>(
    policy: &P,
    request: &Request,
    candidates: &[TestCandidate],
) -> Result<Vec<String>, Rejection> {
    let n = candidates.len() as u32;
    let mut workers = vec![candidate("not-a-candidate").worker];
    workers.extend(candidates.iter().rev().map(|c| c.worker.clone()));
    let mut engines = vec![Engine::Llmgw];
    engines.extend(candidates.iter().rev().map(|c| c.engine));
    let wire = wire(candidates, (1..=n).rev());
    let view = view::join(&workers, &engines, &wire).expect("every worker is in the table");
    match policy.route(request, &view) {
        Decision::Route(order) => {
            assert!(!order.is_empty(), "routes to no worker");
            let mut listed = vec![false; candidates.len()];
            let ids = order.iter().map(|&position| {
                let seen = listed
                    .get_mut(position as usize)
                    .unwrap_or_else(|| panic!("candidate {position} does not exist"));
                assert!(
                    !std::mem::replace(seen, true),
                    "candidate {position} listed twice"
                );
                candidates[position as usize].worker.id.clone()
            });
            Ok(ids.collect())
        }
        Decision::Reject(rejection) => {
            assert!(
                (400..=599).contains(&rejection.status),
                "rejection status {}",
                rejection.status
            );
            Err(rejection)
        }
    }
}

/// `candidates`' figures as a host sends them, the i-th on worker `workers[i]`.
pub(crate) fn wire(
    candidates: &[TestCandidate],
    workers: impl IntoIterator<Item = u32>,
) -> types::Candidates {
    let figures = |f: &dyn Fn(&TestCandidate) -> u32| candidates.iter().map(f).collect();
    let reported = |f: fn(&Load) -> Option<u32>| figures(&|c| f(&c.load).unwrap_or(0));
    types::Candidates {
        worker: workers.into_iter().collect(),
        state: candidates
            .iter()
            .map(|c| {
                let health = match c.health {
                    Health::Healthy => State::empty(),
                    Health::Unknown => State::UNPROBED,
                    Health::HalfOpen => State::HALF_OPEN,
                };
                // The builders set a report's figures all at once.
                let report = match c.load.running {
                    Some(_) => State::REPORTED,
                    None => State::empty(),
                };
                health | report
            })
            .collect(),
        in_flight: figures(&|c| c.load.in_flight),
        running: reported(|l| l.running),
        waiting: reported(|l| l.waiting),
        kv_blocks_used: reported(|l| l.kv_blocks_used),
        kv_blocks_total: reported(|l| l.kv_blocks_total),
        overlap_blocks: figures(&|c| c.overlap_blocks),
        score: candidates.iter().map(|c| c.score).collect(),
    }
}

impl TestCandidate {
    pub fn in_zone(mut self, zone: &str) -> Self {
        self.worker.zone = zone.to_string();
        self
    }

    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.worker.labels.push(Label {
            key: key.to_string(),
            value: value.to_string(),
        });
        self
    }

    pub fn on_engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    pub fn with_score(mut self, score: f64) -> Self {
        self.score = score;
        self
    }

    pub fn with_in_flight(mut self, in_flight: u32) -> Self {
        self.load.in_flight = in_flight;
        self
    }

    /// A fresh load report of the worker: `running` requests, the rest 0.
    pub fn with_running(self, running: u32) -> Self {
        self.with_report(running, 0, 0, 0)
    }

    /// A fresh load report of the worker: requests running and waiting,
    /// KV-cache blocks used of its total.
    pub fn with_report(mut self, running: u32, waiting: u32, kv_used: u32, kv_total: u32) -> Self {
        self.load = Load {
            running: Some(running),
            waiting: Some(waiting),
            kv_blocks_used: Some(kv_used),
            kv_blocks_total: Some(kv_total),
            ..self.load
        };
        self
    }

    /// Leading blocks of the request's prompt the worker holds in KV cache.
    pub fn with_overlap(mut self, blocks: u32) -> Self {
        self.overlap_blocks = blocks;
        self
    }
}

/// One decision of a gateway's decision log (`plugins.decision_log`): what
/// a policy was asked, and what the one in force answered.
#[derive(Debug, Clone)]
pub struct LoggedDecision {
    pub request: Request,
    pub caller: Caller,
    pub candidates: Vec<TestCandidate>,
    /// The workers routed to, in order, or the rejection's status; `None`
    /// when the policy failed.
    pub decision: Option<Result<Vec<String>, u16>>,
}

mod log {
    use alloc::collections::BTreeMap;
    use alloc::string::String;
    use alloc::vec::Vec;

    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Record {
        pub request: Request,
        pub caller: Caller,
        pub candidates: Vec<Candidate>,
        pub decision: Outcome,
    }

    #[derive(Deserialize)]
    pub struct Request {
        pub model: String,
        pub pool: String,
        pub stream: bool,
        pub prompt_tokens: u32,
        pub block_size: u32,
        pub session_key: Option<String>,
        pub headers: Vec<(String, String)>,
        pub gateway_zone: String,
        pub attempt: u32,
    }

    #[derive(Deserialize)]
    pub struct Caller {
        pub tenant: Option<String>,
        pub priority: String,
    }

    #[derive(Deserialize)]
    pub struct Candidate {
        pub id: String,
        pub zone: String,
        pub labels: BTreeMap<String, String>,
        pub engine: String,
        pub state: Vec<String>,
        pub in_flight: u32,
        pub running: u32,
        pub waiting: u32,
        pub kv_blocks_used: u32,
        pub kv_blocks_total: u32,
        pub overlap_blocks: u32,
        pub score: f64,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Outcome {
        Route(Vec<String>),
        Reject { status: u16 },
        Error(serde::de::IgnoredAny),
    }
}

/// Reads a decision log's lines (the gateway's `plugins.decision_log`), so
/// a policy's tests can run over real traffic: [`replay`] asks a policy
/// about one as the host asked the logged one.
pub fn decision_log(text: &str) -> Result<Vec<LoggedDecision>, String> {
    let engine = |name: &str| {
        [
            Engine::Llmgw,
            Engine::Vllm,
            Engine::Sglang,
            Engine::Llamacpp,
            Engine::Openai,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    };
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record: log::Record =
            serde_json::from_str(line).map_err(|e| alloc::format!("line {}: {e}", n + 1))?;
        let candidates = record
            .candidates
            .into_iter()
            .map(|c| {
                let state = |s: &str| c.state.iter().any(|x| x == s);
                let health = if state("half_open") {
                    Health::HalfOpen
                } else if state("unprobed") {
                    Health::Unknown
                } else {
                    Health::Healthy
                };
                let mut t = candidate(&c.id)
                    .in_zone(&c.zone)
                    .on_engine(engine(&c.engine).unwrap_or(Engine::Llmgw))
                    .with_health(health)
                    .with_in_flight(c.in_flight)
                    .with_overlap(c.overlap_blocks)
                    .with_score(c.score);
                if state("reported") {
                    t = t.with_report(c.running, c.waiting, c.kv_blocks_used, c.kv_blocks_total);
                }
                for (key, value) in &c.labels {
                    t = t.with_label(key, value);
                }
                t
            })
            .collect();
        let r = record.request;
        let priority = match record.caller.priority.as_str() {
            "high" => Priority::High,
            "low" => Priority::Low,
            _ => Priority::Normal,
        };
        out.push(LoggedDecision {
            request: Request {
                model: r.model,
                pool: r.pool,
                stream: r.stream,
                prompt_tokens: r.prompt_tokens,
                block_size: r.block_size,
                session_key: r.session_key,
                headers: r.headers,
                gateway_zone: r.gateway_zone,
                attempt: r.attempt,
            },
            caller: Caller {
                tenant: record.caller.tenant,
                priority,
            },
            candidates,
            decision: match record.decision {
                log::Outcome::Route(ids) => Some(Ok(ids)),
                log::Outcome::Reject { status } => Some(Err(status)),
                log::Outcome::Error(_) => None,
            },
        });
    }
    Ok(out)
}

/// Asks `policy` about a logged decision's inputs, from its caller, as
/// [`route`] does.
#[cfg(not(target_arch = "wasm32"))]
pub fn replay<P: Policy>(policy: &P, logged: &LoggedDecision) -> Result<Vec<String>, Rejection> {
    crate::host::set_request_caller(logged.caller.clone());
    let routed = route(policy, &logged.request, &logged.candidates);
    crate::host::set_request_caller(Caller {
        tenant: None,
        priority: Priority::Normal,
    });
    routed
}

impl Request {
    pub fn in_zone(mut self, gateway_zone: &str) -> Self {
        self.gateway_zone = gateway_zone.to_string();
        self
    }

    pub fn with_session(mut self, key: &str) -> Self {
        self.session_key = Some(key.to_string());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's own test reads the same lines (`plugin::record`).
    const FIXTURE: &str = include_str!("../tests/decisions.jsonl");

    #[test]
    fn a_gateways_decision_log_reads_as_test_inputs() {
        let logged = decision_log(FIXTURE).unwrap();
        assert_eq!(logged.len(), 2);
        let first = &logged[0];
        assert_eq!(first.request.session_key.as_deref(), Some("alice"));
        assert_eq!(first.caller.tenant.as_deref(), Some("acme"));
        assert_eq!(first.caller.priority, Priority::High);
        assert_eq!(first.candidates[0].overlap_blocks, 2);
        assert_eq!(first.candidates[0].load.kv_blocks_used, Some(120));
        assert_eq!(first.candidates[1].health, Health::Unknown);
        assert_eq!(
            first.decision,
            Some(Ok(alloc::vec!["w1".into(), "w2".into()]))
        );
        assert_eq!(logged[1].decision, Some(Err(503)));
        assert!(decision_log("{").unwrap_err().starts_with("line 1"));
    }
}
