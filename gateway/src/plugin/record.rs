//! The decision log's format: one JSON object per line, each a routing
//! decision with everything the policy saw (the request's facts, its
//! caller, every candidate with its worker and figures; never prompt text)
//! and what it decided, with workers named by id. The gateway writes it
//! (`plugins.decision_log`), `gatewayctl plugin replay` runs a policy over
//! it, and the SDK's `testing::decision_log` reads it for unit tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::Label;
use super::{
    CandidateState, Decision, PluginError, PolicyCaller, PolicyCandidates, PolicyEngine,
    PolicyPriority, PolicyWorker, RouteRequest, WorkerTable,
};
use crate::jsonl::Appender;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logged {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The version that decided; `None`: the built-in policy.
    pub policy: Option<Version>,
    pub request: Request,
    pub caller: Caller,
    pub candidates: Vec<Candidate>,
    pub decision: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub plugin: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    pub tenant: Option<String>,
    /// `high`, `normal` or `low`.
    pub priority: String,
}

/// A candidate: its worker and its figures, in the order the policy got them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: String,
    pub zone: String,
    pub labels: BTreeMap<String, String>,
    /// `llmgw`, `vllm`, `sglang`, `llamacpp` or `openai`.
    pub engine: String,
    /// Of `unprobed`, `half_open`, `reported`.
    pub state: Vec<String>,
    pub in_flight: u32,
    pub running: u32,
    pub waiting: u32,
    pub kv_blocks_used: u32,
    pub kv_blocks_total: u32,
    pub overlap_blocks: u32,
    pub score: f64,
}

/// What the policy answered: workers by id in the order to try them, a
/// rejection, or the kind of its failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Route(Vec<String>),
    Reject { status: u16, message: String },
    Error(String),
}

const ENGINES: [(PolicyEngine, &str); 5] = [
    (PolicyEngine::Llmgw, "llmgw"),
    (PolicyEngine::Vllm, "vllm"),
    (PolicyEngine::Sglang, "sglang"),
    (PolicyEngine::Llamacpp, "llamacpp"),
    (PolicyEngine::Openai, "openai"),
];

const STATES: [(CandidateState, &str); 3] = [
    (CandidateState::UNPROBED, "unprobed"),
    (CandidateState::HALF_OPEN, "half_open"),
    (CandidateState::REPORTED, "reported"),
];

const PRIORITIES: [(PolicyPriority, &str); 3] = [
    (PolicyPriority::High, "high"),
    (PolicyPriority::Normal, "normal"),
    (PolicyPriority::Low, "low"),
];

/// The inputs a policy is asked with, rebuilt from a record.
pub struct Inputs {
    pub request: RouteRequest,
    pub table: WorkerTable,
    pub candidates: PolicyCandidates,
    pub caller: PolicyCaller,
}

impl Logged {
    /// A record of `request`, `candidates` (referring into `table`) and what came of them.
    pub fn of(
        policy: Option<Version>,
        inputs: (
            &RouteRequest,
            &WorkerTable,
            &PolicyCandidates,
            &PolicyCaller,
        ),
        decision: &Result<Decision, PluginError>,
        ts_ms: u64,
    ) -> Logged {
        let (request, table, candidates, caller) = inputs;
        let listed: Vec<Candidate> = (0..candidates.worker.len())
            .map(|i| {
                let w = candidates.worker[i] as usize;
                let worker = &table.workers()[w];
                let engine = table
                    .engines()
                    .get(w)
                    .copied()
                    .unwrap_or(PolicyEngine::Llmgw);
                Candidate {
                    id: worker.id.clone(),
                    zone: worker.zone.clone(),
                    labels: worker
                        .labels
                        .iter()
                        .map(|l| (l.key.clone(), l.value.clone()))
                        .collect(),
                    engine: name(&ENGINES, engine).to_string(),
                    state: STATES
                        .iter()
                        .filter(|(flag, _)| candidates.state[i].contains(*flag))
                        .map(|(_, n)| n.to_string())
                        .collect(),
                    in_flight: candidates.in_flight[i],
                    running: candidates.running[i],
                    waiting: candidates.waiting[i],
                    kv_blocks_used: candidates.kv_blocks_used[i],
                    kv_blocks_total: candidates.kv_blocks_total[i],
                    overlap_blocks: candidates.overlap_blocks[i],
                    score: candidates.score[i],
                }
            })
            .collect();
        let decision = match decision {
            Ok(Decision::Route(order)) => {
                Outcome::Route(order.iter().map(|&i| listed[i].id.clone()).collect())
            }
            Ok(Decision::Reject { status, message }) => Outcome::Reject {
                status: *status,
                message: message.clone(),
            },
            Err(e) => Outcome::Error(e.kind().to_string()),
        };
        Logged {
            ts_ms,
            policy,
            request: Request {
                model: request.model.clone(),
                pool: request.pool.clone(),
                stream: request.stream,
                prompt_tokens: request.prompt_tokens,
                block_size: request.block_size,
                session_key: request.session_key.clone(),
                headers: request.headers.clone(),
                gateway_zone: request.gateway_zone.clone(),
                attempt: request.attempt,
            },
            caller: Caller {
                tenant: caller.tenant.clone(),
                priority: name(&PRIORITIES, caller.priority).to_string(),
            },
            candidates: listed,
            decision,
        }
    }

    /// The inputs to ask a policy with: a table of the candidates' workers,
    /// in their order.
    pub fn inputs(&self) -> Result<Inputs, String> {
        let mut workers = Vec::with_capacity(self.candidates.len());
        let mut candidates =
            super::table::candidates_on((0..self.candidates.len() as u32).collect());
        for c in &self.candidates {
            let engine = ENGINES
                .iter()
                .find(|(_, n)| *n == c.engine)
                .map(|(e, _)| *e)
                .ok_or_else(|| format!("candidate {}: unknown engine `{}`", c.id, c.engine))?;
            let mut state = CandidateState::empty();
            for s in &c.state {
                let (flag, _) = STATES
                    .iter()
                    .find(|(_, n)| n == s)
                    .ok_or_else(|| format!("candidate {}: unknown state `{s}`", c.id))?;
                state |= *flag;
            }
            let labels = c
                .labels
                .iter()
                .map(|(key, value)| Label {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect();
            workers.push((
                PolicyWorker {
                    id: c.id.clone(),
                    zone: c.zone.clone(),
                    labels,
                },
                engine,
            ));
            candidates.state.push(state);
            candidates.in_flight.push(c.in_flight);
            candidates.running.push(c.running);
            candidates.waiting.push(c.waiting);
            candidates.kv_blocks_used.push(c.kv_blocks_used);
            candidates.kv_blocks_total.push(c.kv_blocks_total);
            candidates.overlap_blocks.push(c.overlap_blocks);
            candidates.score.push(c.score);
        }
        let priority = PRIORITIES
            .iter()
            .find(|(_, n)| *n == self.caller.priority)
            .map(|(p, _)| *p)
            .ok_or_else(|| format!("unknown priority `{}`", self.caller.priority))?;
        let r = &self.request;
        Ok(Inputs {
            request: RouteRequest {
                model: r.model.clone(),
                pool: r.pool.clone(),
                stream: r.stream,
                prompt_tokens: r.prompt_tokens,
                block_size: r.block_size,
                session_key: r.session_key.clone(),
                headers: r.headers.clone(),
                gateway_zone: r.gateway_zone.clone(),
                attempt: r.attempt,
            },
            table: WorkerTable::new(workers),
            candidates,
            caller: PolicyCaller {
                tenant: self.caller.tenant.clone(),
                priority,
            },
        })
    }

    /// `decision` on these inputs, in the log's terms.
    pub fn outcome_of(&self, decision: &Result<Decision, PluginError>) -> Outcome {
        match decision {
            Ok(Decision::Route(order)) => Outcome::Route(
                order
                    .iter()
                    .map(|&i| self.candidates[i].id.clone())
                    .collect(),
            ),
            Ok(Decision::Reject { status, message }) => Outcome::Reject {
                status: *status,
                message: message.clone(),
            },
            Err(e) => Outcome::Error(e.kind().to_string()),
        }
    }
}

/// The appender of the log at `path`, opened on first use and kept for the
/// process; `None` when it cannot be opened (said once in the log).
pub fn log_at(path: &Path) -> Option<&'static Appender<Logged>> {
    static OPEN: Mutex<BTreeMap<PathBuf, Option<&'static Appender<Logged>>>> =
        Mutex::new(BTreeMap::new());
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    *open.entry(path.to_path_buf()).or_insert_with(|| {
        Appender::open(path)
            .map_err(|e| {
                tracing::error!(path = %path.display(), error = %e, "cannot open the decision log");
            })
            .ok()
            .map(|appender| &*Box::leak(Box::new(appender)))
    })
}

fn name<T: PartialEq + Copy>(names: &[(T, &'static str)], value: T) -> &'static str {
    names
        .iter()
        .find(|(v, _)| *v == value)
        .map_or("unknown", |(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK reads the same lines (`plugins/sdk/tests/decisions.jsonl`).
    const FIXTURE: &str = include_str!("../../../plugins/sdk/tests/decisions.jsonl");

    #[test]
    fn a_record_round_trips_through_its_inputs() {
        for line in FIXTURE.lines() {
            let logged: Logged = serde_json::from_str(line).unwrap();
            let inputs = logged.inputs().unwrap();
            let decision = match &logged.decision {
                Outcome::Route(ids) => Ok(Decision::Route(
                    ids.iter()
                        .map(|id| logged.candidates.iter().position(|c| &c.id == id).unwrap())
                        .collect(),
                )),
                Outcome::Reject { status, message } => Ok(Decision::Reject {
                    status: *status,
                    message: message.clone(),
                }),
                Outcome::Error(_) => continue,
            };
            let again = Logged::of(
                logged.policy.clone(),
                (
                    &inputs.request,
                    &inputs.table,
                    &inputs.candidates,
                    &inputs.caller,
                ),
                &decision,
                logged.ts_ms,
            );
            assert_eq!(again, logged);
        }
    }
}
