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
use crate::{view, Decision, Engine, Health, Label, Load, Policy, Rejection, Request, Worker};

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
    pub fn with_running(mut self, running: u32) -> Self {
        self.load = Load {
            running: Some(running),
            waiting: Some(0),
            kv_blocks_used: Some(0),
            kv_blocks_total: Some(0),
            ..self.load
        };
        self
    }
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
