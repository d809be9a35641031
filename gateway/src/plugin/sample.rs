//! Synthetic requests and candidates a new version must decide on before it
//! serves: four workers in three zones, with the labels example policies
//! read, three of them candidates.

use super::bindings::llmgw::policy::types::{Candidates, Engine, Label, Request, State, Worker};
use super::table::WorkerTable;

/// The model the sample requests name; a plugin can tell them apart by it.
pub(crate) const MODEL: &str = "llmgw-sample";

pub(crate) fn worker(id: &str, zone: &str, labels: &[(&str, &str)]) -> Worker {
    Worker {
        id: id.to_string(),
        zone: zone.to_string(),
        labels: labels
            .iter()
            .map(|(key, value)| Label {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect(),
    }
}

/// The table's `workers` as candidates in that order, with neutral figures
/// (healthy, idle, no report, score 1), for samples, tests and benchmarks.
pub(crate) fn candidates_of(workers: &[u32]) -> Candidates {
    let n = workers.len();
    Candidates {
        worker: workers.to_vec(),
        state: vec![State::empty(); n],
        in_flight: vec![0; n],
        running: vec![0; n],
        waiting: vec![0; n],
        kv_blocks_used: vec![0; n],
        kv_blocks_total: vec![0; n],
        overlap_blocks: vec![0; n],
        score: vec![1.0; n],
    }
}

/// A request with nothing unusual about it.
pub(crate) fn request(zone: &str, session_key: Option<&str>) -> Request {
    Request {
        model: MODEL.to_string(),
        pool: "sample".to_string(),
        stream: false,
        prompt_tokens: 64,
        block_size: 16,
        session_key: session_key.map(str::to_string),
        headers: Vec::new(),
        gateway_zone: zone.to_string(),
        attempt: 1,
    }
}

pub(crate) fn table() -> WorkerTable {
    WorkerTable::new(vec![
        (
            worker("sample-a1", "a", &[("version", "v1"), ("colour", "blue")]),
            Engine::Llmgw,
        ),
        (
            worker("sample-a2", "a", &[("version", "v2"), ("colour", "green")]),
            Engine::Vllm,
        ),
        (worker("sample-c1", "c", &[]), Engine::Llamacpp),
        (
            worker("sample-b1", "b", &[("version", "v1"), ("colour", "blue")]),
            Engine::Llmgw,
        ),
    ])
}

/// Three of the table's workers, in another order and with the highest
/// index first: a guest that answers with worker indices instead of
/// candidate positions names a candidate that does not exist.
pub(crate) fn candidates() -> Candidates {
    let mut c = candidates_of(&[3, 0, 1]);
    // Remote and not probed yet, holding some of the prompt.
    c.state[0] = State::UNPROBED;
    c.overlap_blocks[0] = 2;
    c.score[0] = 3.0;
    // Busy, recovering, and reporting its load.
    c.state[2] = State::HALF_OPEN | State::REPORTED;
    c.in_flight[2] = 40;
    (c.running[2], c.waiting[2]) = (48, 3);
    (c.kv_blocks_used[2], c.kv_blocks_total[2]) = (900, 1000);
    c.score[2] = 9.5;
    c
}

/// Sticky and random paths, both zones, a retry.
pub(crate) fn requests() -> Vec<Request> {
    let mut retry = request("b", None);
    retry.stream = true;
    retry.attempt = 2;
    retry.headers = vec![("x-tenant".to_string(), "sample".to_string())];
    vec![request("a", Some("sample-session")), retry]
}
