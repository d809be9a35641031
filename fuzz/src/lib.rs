//! What each fuzz target checks, as plain functions: `cargo fuzz` runs them
//! on generated inputs (`fuzz_targets/`), and `tests/corpus.rs` replays the
//! kept corpus and every input that once crashed them on stable. Each takes
//! any bytes and must neither panic nor hang; where a parser accepts, its
//! result must hold what it promises.

use bytes::Bytes;
use gateway::engine::{self, EngineKind};
use gateway::parse::{self, Endpoint};
use gateway::relay::resume;
use gateway::relay::sse::Events;
use gateway::relay::transcript::{Rewrite, Seen, Transcript};
use protocol::{engine_kv, HealthReport, KvEventBatch, KvSnapshot, LoadMessage};

/// The OpenAI request parser, both endpoints.
pub fn openai_request(data: &[u8]) {
    for endpoint in [Endpoint::Chat, Endpoint::Completion] {
        if let Ok(parsed) = parse::parse(endpoint, data) {
            assert!(!parsed.model.is_empty());
        }
    }
}

/// The SSE reader the relay uses, and what it learns from each event: the
/// input is cut where its first byte says, events are followed plainly and
/// rewritten as after a continuation, and a continuation is built from what
/// was learned, for every engine.
pub fn sse_relay(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(stream.len());
    let mut events = Events::default();
    let mut plain = Transcript::new(true, 1);
    let mut rewritten = Transcript::new(false, 1);
    let mut rewrite = Rewrite {
        id: "c".into(),
        created: 1,
        before: 2,
        echo: "The".into(),
    };
    for part in [&stream[..cut], &stream[cut..]] {
        let Ok(whole) = events.push(Bytes::copy_from_slice(part)) else {
            return;
        };
        for event in whole {
            assert!(event.ends_with(b"\n"), "an event ends with its blank line");
            plain.see(event.clone(), None);
            if let Seen::Forward(out) = rewritten.see(event, Some(&mut rewrite)) {
                assert!(out.is_empty() || out.ends_with(b"\n"));
            }
        }
    }
    let original = serde_json::json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "hi"}], "prompt": "Once", "max_tokens": 8});
    for kind in [
        EngineKind::Llmgw,
        EngineKind::Vllm,
        EngineKind::Sglang,
        EngineKind::Llamacpp,
        EngineKind::Openai,
    ] {
        for endpoint in [Endpoint::Chat, Endpoint::Completion] {
            if let Ok(body) = resume::continuation(&original, endpoint, &plain, kind) {
                serde_json::from_slice::<serde_json::Value>(&body).expect("a continuation is JSON");
            }
        }
    }
}

/// KV events: our workers' NATS messages (JSON), and vLLM's and SGLang's
/// ZeroMQ batches (msgpack), rehashed as the gateway does.
pub fn kv_events(data: &[u8]) {
    let _ = serde_json::from_slice::<KvEventBatch>(data);
    let _ = serde_json::from_slice::<KvSnapshot>(data);
    let _ = serde_json::from_slice::<LoadMessage>(data);
    if let Ok(batch) = engine_kv::decode(data) {
        let mut rehash = gateway::rehash::Rehash::new("w", 16, 1 << 16, 1);
        let rehashed = rehash.rehash(&batch);
        assert_eq!(rehashed.batch.worker_id, "w");
    }
}

/// What the probes read from workers: our `/health`, an engine's
/// `/v1/models` and its Prometheus `/metrics`, for every engine.
pub fn worker_reports(data: &[u8]) {
    let _ = serde_json::from_slice::<HealthReport>(data);
    if let Some(models) = engine::served_models(data) {
        let _ = engine::model_problem(&["m".to_string()], &models);
    }
    let text = String::from_utf8_lossy(data);
    for kind in [EngineKind::Vllm, EngineKind::Sglang, EngineKind::Llamacpp] {
        let _ = engine::load_from_metrics(kind, &text);
    }
}

/// The config loaders: the gateway's file, a routing document from etcd,
/// and the worker's file, each parsed and validated.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = gateway::Config::from_toml(text);
    let _ = gateway::config::RoutingDoc::from_toml(text);
    if let Ok(worker) = toml::from_str::<workers::WorkerConfig>(text) {
        let _ = worker.validate();
    }
}
