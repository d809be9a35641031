//! Synthetic requests and candidates a new version must decide on before it
//! serves: three workers in two zones, with the labels example policies read.

use super::bindings::llmgw::policy::types::{Candidate, Health, Label, Load, Request};

/// The model the sample requests name; a plugin can tell them apart by it.
pub(crate) const MODEL: &str = "llmgw-sample";

/// A candidate with neutral figures, for samples, tests and benchmarks.
pub(crate) fn candidate(id: &str, zone: &str, labels: &[(&str, &str)]) -> Candidate {
    Candidate {
        id: id.to_string(),
        zone: zone.to_string(),
        labels: labels
            .iter()
            .map(|(key, value)| Label {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect(),
        health: Health::Healthy,
        load: Load {
            in_flight: 0,
            running: None,
            waiting: None,
            kv_blocks_used: None,
            kv_blocks_total: None,
        },
        overlap_blocks: 0,
        score: 1.0,
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

pub(crate) fn candidates() -> Vec<Candidate> {
    let mut busy = candidate("sample-a2", "a", &[("version", "v2"), ("colour", "green")]);
    busy.health = Health::HalfOpen;
    busy.load = Load {
        in_flight: 40,
        running: Some(48),
        waiting: Some(3),
        kv_blocks_used: Some(900),
        kv_blocks_total: Some(1000),
    };
    busy.score = 9.5;
    let mut remote = candidate("sample-b1", "b", &[("version", "v1"), ("colour", "blue")]);
    remote.health = Health::Unknown;
    remote.overlap_blocks = 2;
    remote.score = 3.0;
    vec![
        candidate("sample-a1", "a", &[("version", "v1"), ("colour", "blue")]),
        busy,
        remote,
    ]
}

/// Sticky and random paths, both zones, a retry.
pub(crate) fn requests() -> Vec<Request> {
    let mut retry = request("b", None);
    retry.stream = true;
    retry.attempt = 2;
    retry.headers = vec![("x-tenant".to_string(), "sample".to_string())];
    vec![request("a", Some("sample-session")), retry]
}
