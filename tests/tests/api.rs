//! The OpenAI API through the gateway: chat and text completions, streaming
//! and not, usage, models, request ids, metrics, every bad input, and the
//! official `openai` Python client.

use e2e::*;
use serde_json::{json, Value};

#[tokio::test]
async fn chat_and_completions_through_the_gateway() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let gw = spawn_gateway("a", &[&w1], "").await;
    let c = client();

    let resp = c
        .post(format!("{}/v1/chat/completions", gw.api))
        .header("x-request-id", "req-123")
        .json(&chat("Tell me about the weather.", false, 8))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-worker-id"], "w1");
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    let usage = &v["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 8);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // A request id is made up when the client sends none.
    let resp = c
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(&chat("Hi", false, 2))
        .send()
        .await
        .unwrap();
    assert!(!resp.headers()["x-request-id"].to_str().unwrap().is_empty());

    // Streaming with usage: a role chunk first, content, a usage chunk with no choices, [DONE].
    let mut body = chat("Tell me about networks.", true, 12);
    body["stream_options"] = json!({"include_usage": true});
    let resp = c
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (events, done) = sse_events(&resp.text().await.unwrap());
    assert!(done, "stream ends with [DONE]");
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| {
            e["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(!text.is_empty());
    let last = events.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // A repeated long prompt is served from the worker's prefix cache.
    let long = "The network carries packets from host to host across many links. ".repeat(20);
    let mut cached = 0;
    for _ in 0..2 {
        let v: Value = c
            .post(format!("{}/v1/chat/completions", gw.api))
            .json(&chat(&long, false, 4))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
    }
    assert!(cached > 0, "second identical prompt reuses cached blocks");

    // Text completions, both ways.
    let completion = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 6});
    let v: Value = c
        .post(format!("{}/v1/completions", gw.api))
        .json(&completion)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    let mut streamed = completion.clone();
    streamed["stream"] = json!(true);
    let resp = c
        .post(format!("{}/v1/completions", gw.api))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    let (events, done) = sse_events(&resp.text().await.unwrap());
    assert!(done && !events.is_empty());
    assert_eq!(events[0]["object"], "text_completion");

    // Models: the union of the pools' models.
    let v: Value = c
        .get(format!("{}/v1/models", gw.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);

    // h2c: HTTP/2 without TLS.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(&chat("Hi", false, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);

    // Metrics saw it all.
    let metrics = metrics_text(&gw).await;
    for name in [
        "llmgw_requests_total{",
        "llmgw_time_to_first_token_seconds_bucket",
        "llmgw_inter_token_latency_seconds_bucket",
        "llmgw_request_duration_seconds_bucket",
        "llmgw_worker_healthy{",
        "llmgw_worker_in_flight_requests{",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert!(metrics.contains(r#"status="200""#));
    // Series exist from the start; these counted the requests above.
    for count in [
        "llmgw_time_to_first_token_seconds_count",
        "llmgw_inter_token_latency_seconds_count",
        "llmgw_request_duration_seconds_count",
        "llmgw_prompt_blocks_total",
    ] {
        assert!(metric(&gw, count).await > 0.0, "{count} counted nothing");
    }

    // Probes and status.
    assert_eq!(
        c.get(format!("{}/live", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/ready", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let w = worker_status(&gw, "w1").await;
    assert_eq!(w["zone"], "a");
    assert_eq!(w["health"], "healthy");
    assert_eq!(w["in_flight"], 0);
}

async fn expect_error(resp: reqwest::Response, status: u16, code: Option<&str>) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["type"].is_string(), "{v}");
    if let Some(code) = code {
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    v
}

#[tokio::test]
async fn bad_input_gets_openai_errors() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let gw = spawn_gateway(
        "a",
        &[&w1],
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\nmax_body_bytes = 2000\n",
    )
    .await;
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.api);

    let huge = chat(&"x".repeat(5000), false, 2);
    expect_error(
        c.post(&url).json(&huge).send().await.unwrap(),
        413,
        Some("payload_too_large"),
    )
    .await;
    // Without a content-length the limit still holds.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok(bytes::Bytes::from(huge.to_string()))];
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    expect_error(c.post(&url).body(streamed).send().await.unwrap(), 413, None).await;

    expect_error(
        c.post(&url).body("{not json").send().await.unwrap(),
        400,
        None,
    )
    .await;
    expect_error(c.post(&url).body("").send().await.unwrap(), 400, None).await;
    let v = expect_error(
        c.post(&url)
            .json(&json!({"model": MODEL}))
            .send()
            .await
            .unwrap(),
        400,
        None,
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("messages"));
    let mut bad = chat("hi", false, 2);
    bad["temperature"] = json!(7);
    let v = expect_error(c.post(&url).json(&bad).send().await.unwrap(), 400, None).await;
    assert_eq!(v["error"]["param"], "temperature");
    let mut bad = chat("hi", false, 2);
    bad["messages"] = json!("not a list");
    expect_error(c.post(&url).json(&bad).send().await.unwrap(), 400, None).await;
    // What the worker cannot honour is refused by name, never ignored; the
    // gateway passes it through (an engine that honours it would answer).
    for (param, value) in [
        (
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
        ("modalities", json!(["text", "audio"])),
    ] {
        let mut asked = chat("hi", false, 2);
        asked[param] = value;
        let v = expect_error(c.post(&url).json(&asked).send().await.unwrap(), 400, None).await;
        assert_eq!(v["error"]["param"], param, "{v}");
    }

    let mut unknown = chat("hi", false, 2);
    unknown["model"] = json!("gpt-imaginary");
    let v = expect_error(
        c.post(&url).json(&unknown).send().await.unwrap(),
        404,
        Some("model_not_found"),
    )
    .await;
    assert_eq!(v["error"]["type"], "invalid_request_error");

    expect_error(c.get(&url).send().await.unwrap(), 405, None).await;
    expect_error(
        c.get(format!("{}/v2/nothing", gw.api))
            .send()
            .await
            .unwrap(),
        404,
        None,
    )
    .await;
    let completion = json!({"model": MODEL, "prompt": ["a", "b"]});
    expect_error(
        c.post(format!("{}/v1/completions", gw.api))
            .json(&completion)
            .send()
            .await
            .unwrap(),
        400,
        None,
    )
    .await;

    // None of that hurt the gateway or counted against the worker.
    let resp = c
        .post(&url)
        .json(&chat("still fine?", false, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(worker_status(&gw, "w1").await["breaker"], "closed");
}

#[tokio::test]
async fn official_openai_python_client_works() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let gw = spawn_gateway("a", &[&w1], "").await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/openai_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(format!("{}/v1", gw.api))
        .arg(MODEL)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai client script failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("all openai client checks passed"),
        "{stdout}"
    );
}

#[tokio::test]
async fn embedded_demo_serves_and_stops_cleanly() {
    let mut cmd = tokio::process::Command::new(bin("llmgw-demo"));
    cmd.args([
        "--api",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--plugins",
    ])
    .arg(plugins_dir());
    let (mut demo, found) = Proc::spawn(cmd, &["gateway  "]).await;
    let mut words = found[0].split_whitespace();
    let api = words.next().unwrap().to_string();
    let admin = words.nth(1).unwrap().trim_end_matches(')').to_string();
    let status: Value = client()
        .get(format!("{admin}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["pools"][0]["policy"]["policy"]["plugin"], "failover",
        "{status}"
    );
    let c = client();
    let mut zones = std::collections::HashSet::new();
    for i in 0..6 {
        let resp = c
            .post(format!("{api}/v1/chat/completions"))
            .json(&chat(&format!("hi {i}"), false, 4))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        zones.insert(resp.headers()["x-worker-id"].to_str().unwrap().to_string());
    }
    assert!(
        zones.iter().all(|w| w == "w1" || w == "w2"),
        "the demo gateway sits in zone a: {zones:?}"
    );
    demo.sigterm();
    assert!(demo.wait().await.success());
}

/// `n`, log probabilities and penalties pass through the gateway untouched,
/// and a request of several choices goes whole to one worker, which computes
/// its prompt once: streamed (the gateway follows the stream) and not.
#[tokio::test]
async fn several_choices_go_whole_to_one_worker() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let w2 = spawn_worker("w2", "a", WorkerOpts::default()).await;
    let gw = spawn_gateway("a", &[&w1, &w2], "").await;
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.api);
    let mut body = chat("Tell me about the weather.", false, 6);
    body["n"] = json!(3);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(1);
    body["presence_penalty"] = json!(0.5);
    let resp = c.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{v}");
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["logprobs"]["content"].as_array().unwrap().len(), 6);
    }
    assert_eq!(v["usage"]["completion_tokens"], 18);
    let single = chat("Tell me about the weather.", false, 6);
    let one: Value = c
        .post(&url)
        .json(&single)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);

    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = c.post(&url).json(&body).send().await.unwrap();
    // One worker answers all three choices: the gateway forwards the request as it came.
    assert!(resp.headers().contains_key("x-worker-id"));
    let (events, done) = sse_events(&resp.text().await.unwrap());
    assert!(done);
    let mut finishes = [0; 3];
    for event in &events {
        if let Some(choice) = event["choices"].get(0) {
            if choice["finish_reason"].is_string() {
                finishes[choice["index"].as_u64().unwrap() as usize] += 1;
            }
        }
    }
    assert_eq!(finishes, [1; 3], "{events:?}");
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], 18);
}
