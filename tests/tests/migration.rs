//! Mid-stream migration: a stream whose worker is killed, hangs or breaks
//! after the client had its first bytes goes on, on another worker, as one
//! uninterrupted stream: the same `id`, one role chunk, no text lost or
//! repeated, the same `finish_reason` and usage as the unbroken answer, which
//! under greedy decoding it equals token for token. What cannot be continued
//! ends with an OpenAI error event, never a silent cut.

use std::time::Duration;

use e2e::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// An answer as the client read it.
#[derive(Debug, PartialEq)]
struct Answer {
    text: String,
    ids: Vec<String>,
    roles: usize,
    finish: Option<String>,
    usage: Value,
    errors: Vec<Value>,
    done: bool,
}

impl Answer {
    fn of(raw: &str) -> Answer {
        let (events, done) = sse_events(raw);
        let mut answer = Answer {
            text: String::new(),
            ids: Vec::new(),
            roles: 0,
            finish: None,
            usage: Value::Null,
            errors: Vec::new(),
            done,
        };
        for event in events {
            if !event["error"].is_null() {
                answer.errors.push(event["error"].clone());
                continue;
            }
            answer.ids.push(event["id"].as_str().unwrap().to_string());
            if event["usage"].is_object() {
                answer.usage = event["usage"].clone();
            }
            let Some(choice) = event["choices"].get(0) else {
                continue;
            };
            let delta = &choice["delta"];
            answer.roles += usize::from(delta.get("role").is_some());
            answer
                .text
                .push_str(delta["content"].as_str().unwrap_or_default());
            if let Some(reason) = choice["finish_reason"].as_str() {
                answer.finish = Some(reason.to_string());
            }
        }
        answer
    }

    /// The same answer, read as one stream.
    fn assert_same_as(&self, unbroken: &Answer) {
        assert!(self.errors.is_empty(), "{:?}", self.errors);
        assert!(self.done);
        assert_eq!(self.text, unbroken.text);
        assert_eq!(self.roles, 1);
        assert!(
            self.ids.iter().all(|id| *id == self.ids[0]),
            "{:?}",
            self.ids
        );
        assert_eq!(self.finish, unbroken.finish);
        // Cached prompt tokens are the serving worker's own.
        for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(self.usage[count], unbroken.usage[count], "{count}");
        }
    }
}

/// Streams `body` through `api`; once `after` text events arrived, runs
/// `fault` with the serving worker's id. Returns the raw body.
async fn stream(api: &str, body: &Value, after: usize, fault: impl FnOnce(&str)) -> String {
    let resp = client()
        .post(format!("{api}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let worker = resp.headers()["x-worker-id"].to_str().unwrap().to_string();
    let mut fault = Some(fault);
    let mut raw = String::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), chunks.next())
        .await
        .expect("the stream goes on")
    {
        raw.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        let texts = raw.matches(r#""content":""#).count() - raw.matches(r#""content":"""#).count();
        if texts >= after {
            if let Some(fault) = fault.take() {
                fault(&worker);
            }
        }
    }
    assert!(fault.is_none(), "the stream ended before the fault: {raw}");
    raw
}

/// The unbroken answer to `body`.
async fn unbroken(api: &str, body: &Value) -> Answer {
    let answer = Answer::of(&stream(api, body, 0, |_| {}).await);
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
        let raw = stream(&gw.api, &body, 10, |id| {
            named(&workers, id).proc.signal("KILL")
        })
        .await;
        Answer::of(&raw).assert_same_as(&whole);
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
    let raw = stream(&gw.api, &body, 10, |id| {
        named(&workers, id).proc.signal("STOP");
        stopped = Some(id.to_string());
    })
    .await;
    named(&workers, &stopped.unwrap()).proc.signal("CONT");
    Answer::of(&raw).assert_same_as(&whole);
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
        let raw = stream(&gw.api, &story(Some(0.0)), 10, |id| {
            named(&workers, id).proc.signal("KILL")
        })
        .await;
        let answer = Answer::of(&raw);
        assert!(answer.done, "{raw}");
        assert_eq!(answer.errors.len(), 1, "{raw}");
        let message = answer.errors[0]["message"].as_str().unwrap();
        assert!(message.contains("broke mid-answer"), "{message}");
        assert_eq!(answer.finish, None);
    }
}
