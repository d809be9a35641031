//! Replays, on stable, every kept input of each fuzz target: the corpus
//! under `corpus/<target>/` and the inputs that once crashed a target under
//! `regressions/<target>/`.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            check(&std::fs::read(&path).unwrap());
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no kept inputs for {target}");
}

#[test]
fn openai_request() {
    replay("openai_request", fuzz::openai_request);
}

#[test]
fn sse_relay() {
    replay("sse_relay", fuzz::sse_relay);
}

#[test]
fn kv_events() {
    replay("kv_events", fuzz::kv_events);
}

#[test]
fn worker_reports() {
    replay("worker_reports", fuzz::worker_reports);
}

#[test]
fn config() {
    replay("config", fuzz::config);
}
