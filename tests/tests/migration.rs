//! Mid-stream migration: a stream whose worker is killed, hangs or breaks
//! after the client had its first bytes goes on, on another worker, as one
//! uninterrupted stream: the same `id`, one role chunk, no text lost or
//! repeated, the same `finish_reason` and usage as the unbroken answer, which
//! under greedy decoding it equals token for token. What cannot be continued
//! ends with an OpenAI error event, never a silent cut.

use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

/// The unbroken answer to `body`.
async fn unbroken(api: &str, body: &Value) -> Streamed {
    let answer = Streamed::of(&stream_with_fault(api, body, 0, |_| {}).await);
    assert!(answer.errors.is_empty() && answer.done, "{answer:?}");
    answer
}

fn story(temperature: Option<f64>) -> Value {
    let mut body = chat("tell me a long story", true, 60);
    body["stream_options"] = json!({"include_usage": true});
    if let Some(t) = temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// Sim workers slow enough that a 60-token answer takes over a second.
async fn workers(n: usize) -> Vec<WorkerProc> {
    let opts = WorkerOpts {
        decode_step_us: 20_000,
        ..WorkerOpts::default()
    };
    let mut workers = Vec::new();
    for i in 1..=n {
        workers.push(spawn_worker(&format!("w{i}"), "a", opts.clone()).await);
    }
    workers
}

fn named<'a>(workers: &'a [WorkerProc], id: &str) -> &'a WorkerProc {
    workers
        .iter()
        .find(|w| w.id == id)
        .expect("a worker of the test")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_goes_on_when_its_worker_is_killed() {
    let workers = workers(3).await;
    let gw = spawn_gateway("a", &workers.iter().collect::<Vec<_>>(), "").await;
    // Greedy, and sampled: our workers resume the random stream too.
    for temperature in [Some(0.0), None] {
        let body = story(temperature);
        let whole = unbroken(&gw.api, &body).await;
        assert_eq!(whole.finish.as_deref(), Some("length"));
        assert_eq!(whole.usage["completion_tokens"], 60);
        let raw = stream_with_fault(&gw.api, &body, 10, |id| {
            named(&workers, id).proc.signal("KILL")
        })
        .await;
        Streamed::of(&raw).assert_same_as(&whole);
    }
    let metrics = metrics_text(&gw).await;
    let continued: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("llmgw_migrations_total{") && l.contains("outcome=\"continued\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(continued, 2.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_worker_hangs_goes_on_after_the_stall_limit() {
    let workers = workers(2).await;
    let gw = spawn_gateway(
        "a",
        &workers.iter().collect::<Vec<_>>(),
        "[retry]\nstream_stall_ms = 500\n",
    )
    .await;
    let body = story(Some(0.0));
    let whole = unbroken(&gw.api, &body).await;
    let mut stopped = None;
    let raw = stream_with_fault(&gw.api, &body, 10, |id| {
        named(&workers, id).proc.signal("STOP");
        stopped = Some(id.to_string());
    })
    .await;
    named(&workers, &stopped.unwrap()).proc.signal("CONT");
    Streamed::of(&raw).assert_same_as(&whole);
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains(
            "llmgw_migrations_total{pool=\"sim\",reason=\"stall\",outcome=\"continued\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_is_not_streamed_survives_its_worker_dying() {
    let workers = workers(2).await;
    let gw = spawn_gateway("a", &workers.iter().collect::<Vec<_>>(), "").await;
    let mut body = chat("tell me a long story", false, 60);
    body["temperature"] = json!(0);
    let (_, whole) = served_with_answer(&gw.api, &body).await;
    let answer = tokio::spawn({
        let (api, body) = (gw.api.clone(), body.clone());
        async move { served_with_answer(&api, &body).await }
    });
    // Killed mid-generation: whichever worker holds the request.
    let busy = loop {
        let mut busy = None;
        for w in &workers {
            if worker_status(&gw, &w.id).await["in_flight"] == 1 {
                busy = Some(w.id.clone());
            }
        }
        if busy.is_some() {
            break busy;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    named(&workers, busy.as_deref().unwrap())
        .proc
        .signal("KILL");
    let (served_by, answer) = answer.await.unwrap();
    assert_ne!(Some(served_by), busy);
    assert_eq!(answer["choices"], whole["choices"]);
    // Cached prompt tokens are the serving worker's own.
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(answer["usage"][count], whole["usage"][count], "{count}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_continued_ends_with_an_error_event() {
    // With continuing off, and with no other worker to continue on.
    for (n, extra) in [(2, "[retry]\nmax_migrations = 0\n"), (1, "")] {
        let workers = workers(n).await;
        let gw = spawn_gateway("a", &workers.iter().collect::<Vec<_>>(), extra).await;
        let raw = stream_with_fault(&gw.api, &story(Some(0.0)), 10, |id| {
            named(&workers, id).proc.signal("KILL")
        })
        .await;
        let answer = Streamed::of(&raw);
        assert!(answer.done, "{raw}");
        assert_eq!(answer.errors.len(), 1, "{raw}");
        let message = answer.errors[0]["message"].as_str().unwrap();
        assert!(message.contains("broke mid-answer"), "{message}");
        assert_eq!(answer.finish, None);
    }
}
