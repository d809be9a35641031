//! The worker's HTTP API, end to end in process: `start()` on port 0 and a
//! plain hyper client.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use workers::{SimConfig, WorkerConfig, WorkerHandle};

async fn worker(tweak: impl FnOnce(&mut WorkerConfig)) -> WorkerHandle {
    let mut config = WorkerConfig::sim("w-test", "127.0.0.1:0".parse().unwrap(), "sim-llama", "z1");
    config.engine.sim = SimConfig {
        prefill_us_per_token: 0,
        decode_step_us: 50,
        decode_us_per_seq: 0,
    };
    tweak(&mut config);
    workers::start(config).await.unwrap()
}

async fn send(w: &WorkerHandle, request: Request<Full<Bytes>>) -> hyper::Response<Incoming> {
    let stream = TcpStream::connect(w.local_addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender.send_request(request).await.unwrap()
}

fn request(method: Method, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "worker")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// Status and body of a non-streaming call.
async fn call(w: &WorkerHandle, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let response = send(w, request(method, path, body.to_string())).await;
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn post(w: &WorkerHandle, path: &str, body: Value) -> (StatusCode, Value) {
    call(w, Method::POST, path, &body.to_string()).await
}

/// The `data:` payloads of an SSE response, `[DONE]` included.
async fn sse(w: &WorkerHandle, path: &str, body: Value) -> Vec<String> {
    let response = send(w, request(Method::POST, path, body.to_string())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_string())
        .collect()
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body =
        json!({"model": "sim-llama", "messages": [{"role": "user", "content": content}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn chat_completion_non_streaming() {
    let w = worker(|_| {}).await;
    let mut req = request(
        Method::POST,
        "/v1/chat/completions",
        chat("Hello there", json!({"max_tokens": 8})).to_string(),
    );
    req.headers_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let response = send(&w, req).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "sim-llama");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn chat_stream_with_usage_and_prefix_cache() {
    let w = worker(|_| {}).await;
    let long = "The network hums through the storm while packets find their way. ".repeat(20);
    let body = chat(
        &long,
        json!({"max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let mut cached = Vec::new();
    for _ in 0..2 {
        let events = sse(&w, "/v1/chat/completions", body.clone()).await;
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let (usage_chunk, rest) = chunks.split_last().unwrap();
        assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 12);
        let finish = rest.last().unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
        for chunk in rest {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], chunks[0]["id"]);
            assert!(
                chunk["usage"].is_null() && chunk.get("usage").is_some(),
                "{chunk}"
            );
        }
        let text: String = rest
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(!text.is_empty());
        cached.push(
            usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(cached[0], 0);
    assert!(cached[1] > 0, "{cached:?}");
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn stream_without_usage_has_no_usage_field() {
    let w = worker(|_| {}).await;
    let events = sse(
        &w,
        "/v1/chat/completions",
        chat("hi", json!({"max_tokens": 3, "stream": true})),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        assert!(chunk.get("usage").is_none(), "{chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn completions_text_and_token_prompts() {
    let w = worker(|_| {}).await;
    let (status, body) = post(
        &w,
        "/v1/completions",
        json!({"model": "sim-llama", "prompt": "Rain at noon", "max_tokens": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let (status, body) = post(
        &w,
        "/v1/completions",
        json!({"model": "sim-llama", "prompt": [1, 2, 3], "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let events = sse(
        &w,
        "/v1/completions",
        json!({"model": "sim-llama", "prompt": "Rain", "max_tokens": 4, "stream": true}),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn same_seed_same_text_and_stop_strings_cut_it() {
    let w = worker(|_| {}).await;
    let body = chat(
        "Tell me about the weather",
        json!({"max_tokens": 40, "seed": 11}),
    );
    let (_, a) = post(&w, "/v1/chat/completions", body.clone()).await;
    let (_, b) = post(&w, "/v1/chat/completions", body).await;
    let text = a["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        text,
        b["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // A word from the middle of that text as the stop string.
    let stop = text.split_whitespace().nth(3).unwrap().to_string();
    let expected = &text[..text.find(&stop).unwrap()];
    let stopped = chat(
        "Tell me about the weather",
        json!({"max_tokens": 40, "seed": 11, "stop": [stop]}),
    );
    let (status, c) = post(&w, "/v1/chat/completions", stopped.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(c["choices"][0]["message"]["content"], expected);
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert!(c["usage"]["completion_tokens"].as_u64().unwrap() < 40);
    let mut streamed = stopped;
    streamed["stream"] = json!(true);
    let events = sse(&w, "/v1/chat/completions", streamed).await;
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, expected);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let w = worker(|c| {
        c.max_body_bytes = 1024;
        c.engine.max_model_len = 64;
    })
    .await;
    let cases: Vec<(Method, &str, String, u16, Option<&str>)> =
        vec![
        (
            Method::POST,
            "/v1/chat/completions",
            "{not json".into(),
            400,
            None,
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            r#"{"model":"sim-llama"}"#.into(),
            400,
            None,
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            chat("x", json!({"temperature": 3})).to_string(),
            400,
            Some("temperature"),
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            chat("x", json!({"max_tokens": 500})).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            chat(&"long ".repeat(300), json!({})).to_string(),
            413,
            None,
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}).to_string(),
            404,
            Some("model"),
        ),
        (
            Method::POST,
            "/v1/completions",
            json!({"model": "sim-llama", "prompt": [1, 999_999]}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            Method::POST,
            "/v1/completions",
            json!({"model": "sim-llama", "prompt": "word ".repeat(70)}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            chat("x", json!({"logit_bias": {"99999": 5}})).to_string(),
            400,
            Some("logit_bias"),
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            chat(
                "x",
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}),
            )
            .to_string(),
            400,
            Some("response_format"),
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            chat("x", json!({"n": 2, "stream": true, "llmgw_resume": {
                "token_ids": [5], "id": "chatcmpl-x", "created": 1}}))
            .to_string(),
            400,
            Some("llmgw_resume"),
        ),
        (Method::POST, "/v1/nothing", "{}".into(), 404, None),
        (
            Method::GET,
            "/v1/chat/completions",
            String::new(),
            405,
            None,
        ),
        (Method::POST, "/health", String::new(), 405, None),
    ];
    for (method, path, body, status, param) in cases {
        let (got, error) = call(&w, method.clone(), path, &body).await;
        assert_eq!(got.as_u16(), status, "{method} {path} {body}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{error}"
        );
        assert!(error["error"]["type"].is_string(), "{error}");
        assert_eq!(error["error"]["param"].as_str(), param, "{error}");
    }
    let (_, error) = post(
        &w,
        "/v1/chat/completions",
        json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(error["error"]["code"], "model_not_found");
    // A worker that refused all that still serves.
    let (status, _) = post(
        &w,
        "/v1/chat/completions",
        chat("x", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn health_and_models() {
    let w = worker(|_| {}).await;
    let (status, health) = call(&w, Method::GET, "/health", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["worker_id"], "w-test");
    assert_eq!(health["model"], "sim-llama");
    assert_eq!(health["load"]["running"], 0);
    let (status, models) = call(&w, Method::GET, "/v1/models", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "sim-llama");
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn serves_h2c() {
    let w = worker(|_| {}).await;
    let stream = TcpStream::connect(w.local_addr()).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/v1/chat/completions", w.url()))
        .body(Full::new(Bytes::from(
            chat("hi", json!({"max_tokens": 3})).to_string(),
        )))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    w.shutdown(Duration::from_secs(1)).await;
}

/// The worker's load as `/health` reports it.
async fn load(w: &WorkerHandle) -> Value {
    call(w, Method::GET, "/health", "").await.1["load"].clone()
}

#[tokio::test]
async fn a_client_leaving_frees_its_sequence() {
    let w = worker(|c| c.engine.sim.decode_step_us = 100).await;
    let response = send(
        &w,
        request(
            Method::POST,
            "/v1/chat/completions",
            chat("hi", json!({"max_tokens": 4000, "stream": true})).to_string(),
        ),
    )
    .await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(load(&w).await["running"], 1);
    drop(body);
    // Bounded only so a regression fails instead of hanging.
    for _ in 0..2000 {
        if load(&w).await["running"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(load(&w).await["running"], 0);
    assert_eq!(load(&w).await["kv_blocks_used"], 0);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn drain_finishes_in_flight_streams_then_stops() {
    let w = worker(|c| c.engine.sim.decode_step_us = 100).await;
    let addr = w.local_addr();
    let response = send(
        &w,
        request(
            Method::POST,
            "/v1/chat/completions",
            chat("hi", json!({"max_tokens": 300, "stream": true})).to_string(),
        ),
    )
    .await;
    let reader =
        tokio::spawn(async move { response.into_body().collect().await.unwrap().to_bytes() });
    w.shutdown(Duration::from_secs(30)).await;
    let body = String::from_utf8(reader.await.unwrap().to_vec()).unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn drain_cuts_off_what_outlives_the_grace() {
    let w = worker(|c| c.engine.sim.decode_step_us = 100).await;
    let response = send(
        &w,
        request(
            Method::POST,
            "/v1/chat/completions",
            chat("hi", json!({"max_tokens": 4000, "stream": true})).to_string(),
        ),
    )
    .await;
    let reader =
        tokio::spawn(async move { response.into_body().collect().await.map(|b| b.to_bytes()) });
    w.shutdown(Duration::from_millis(50)).await;
    let cut = match reader.await.unwrap() {
        Ok(bytes) => !String::from_utf8_lossy(&bytes).contains("[DONE]"),
        Err(_) => true,
    };
    assert!(cut);
}

#[tokio::test]
async fn several_choices_share_one_prompt() {
    let w = worker(|_| {}).await;
    let body = chat("tell me about the rain", json!({"max_tokens": 6, "n": 3}));
    let (status, one) = post(&w, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let choices = one["choices"].as_array().unwrap();
    let indexes: Vec<u64> = choices
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2]);
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    // Each choice draws from its own seed: the sim recites from its own offset.
    assert!(texts[0] != texts[1] && texts[1] != texts[2], "{texts:?}");
    // The prompt counts once; completion tokens are every choice's.
    let (_, single) = post(
        &w,
        "/v1/chat/completions",
        chat("tell me about the rain", json!({"max_tokens": 6})),
    )
    .await;
    assert_eq!(
        one["usage"]["prompt_tokens"],
        single["usage"]["prompt_tokens"]
    );
    assert_eq!(one["usage"]["completion_tokens"], 18);
    // Streamed: every choice opens with its role, finishes once, and the
    // usage follows the last finish.
    let mut body = body;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = sse(&w, "/v1/chat/completions", body).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 18);
    let mut streamed = vec![String::new(); 3];
    let (mut roles, mut finishes) = ([0; 3], [0; 3]);
    for chunk in &chunks[..chunks.len() - 1] {
        let choice = &chunk["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        roles[i] += usize::from(choice["delta"]["role"] == "assistant");
        finishes[i] += usize::from(choice["finish_reason"].is_string());
        streamed[i].push_str(choice["delta"]["content"].as_str().unwrap_or_default());
    }
    assert_eq!((roles, finishes), ([1; 3], [1; 3]));
    assert_eq!(streamed, texts);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn logprobs_come_in_openai_shapes() {
    let w = worker(|_| {}).await;
    // The sim recites, so its every token is certain: log probability 0.
    let body = chat(
        "rain",
        json!({"max_tokens": 4, "logprobs": true, "top_logprobs": 2}),
    );
    let (_, answer) = post(&w, "/v1/chat/completions", body.clone()).await;
    let choice = &answer["choices"][0];
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    let mut bytes = Vec::new();
    for entry in content {
        assert_eq!(entry["logprob"], 0.0);
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top[0]["token"], entry["token"]);
        bytes.extend(
            entry["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        choice["message"]["content"]
    );
    // Without logprobs asked for, none.
    let (_, plain) = post(
        &w,
        "/v1/chat/completions",
        chat("rain", json!({"max_tokens": 4})),
    )
    .await;
    assert!(plain["choices"][0]["logprobs"].is_null());
    // Streamed, each chunk carries its tokens'.
    let mut stream = body;
    stream["stream"] = json!(true);
    let events = sse(&w, "/v1/chat/completions", stream).await;
    let streamed: usize = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum();
    assert_eq!(streamed, 4);
    // Text completions: tokens, their log probabilities and offsets.
    let (_, text) = post(
        &w,
        "/v1/completions",
        json!({"model": "sim-llama", "prompt": "rain", "max_tokens": 5, "logprobs": 1}),
    )
    .await;
    let choice = &text["choices"][0];
    let logprobs = &choice["logprobs"];
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), choice["text"].as_str().unwrap());
    let offsets: Vec<u64> = logprobs["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert_eq!(offsets[1], tokens[0].chars().count() as u64);
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), 5);
    assert_eq!(logprobs["top_logprobs"][0][tokens[0]], 0.0);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_stop_string_ends_only_its_own_choice() {
    let w = worker(|_| {}).await;
    let body = chat("rain over the hills", json!({"max_tokens": 12, "n": 3}));
    let (_, whole) = post(&w, "/v1/chat/completions", body.clone()).await;
    let texts: Vec<String> = whole["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap().to_string())
        .collect();
    // A word of the first choice that the others never say.
    let word = texts[0]
        .split_whitespace()
        .skip(1)
        .find(|w| w.len() > 2 && !texts[1].contains(*w) && !texts[2].contains(*w))
        .expect("the choices recite different text")
        .to_string();
    let mut stopped = body;
    stopped["stop"] = json!([word]);
    for stream in [false, true] {
        stopped["stream"] = json!(stream);
        let (mut got, mut finish) = (vec![String::new(); 3], vec![String::new(); 3]);
        if stream {
            let events = sse(&w, "/v1/chat/completions", stopped.clone()).await;
            for e in &events[..events.len() - 1] {
                let chunk: Value = serde_json::from_str(e).unwrap();
                let choice = &chunk["choices"][0];
                let i = choice["index"].as_u64().unwrap() as usize;
                got[i].push_str(choice["delta"]["content"].as_str().unwrap_or_default());
                if let Some(reason) = choice["finish_reason"].as_str() {
                    finish[i] = reason.to_string();
                }
            }
        } else {
            let (_, answer) = post(&w, "/v1/chat/completions", stopped.clone()).await;
            for (i, c) in answer["choices"].as_array().unwrap().iter().enumerate() {
                got[i] = c["message"]["content"].as_str().unwrap().to_string();
                finish[i] = c["finish_reason"].as_str().unwrap().to_string();
            }
        }
        let cut = texts[0].find(&word).unwrap();
        assert_eq!(got[0], texts[0][..cut], "stream {stream}");
        assert_eq!(finish, ["stop", "length", "length"], "stream {stream}");
        assert_eq!(got[1..], texts[1..], "stream {stream}");
    }
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn streamed_completions_carry_logprobs_and_offsets() {
    let w = worker(|_| {}).await;
    let body = json!({"model": "sim-llama", "prompt": "rain", "max_tokens": 6, "logprobs": 2, "stream": true});
    let events = sse(&w, "/v1/completions", body).await;
    let (mut text, mut tokens, mut offsets) = (String::new(), Vec::new(), Vec::new());
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        let choice = &chunk["choices"][0];
        text.push_str(choice["text"].as_str().unwrap_or_default());
        if let Some(lp) = choice["logprobs"].as_object() {
            tokens.extend(
                lp["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string()),
            );
            offsets.extend(
                lp["text_offset"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_u64().unwrap()),
            );
        }
    }
    assert_eq!(tokens.len(), 6);
    assert_eq!(tokens.concat(), text);
    // Offsets run on across chunks.
    let mut at = 0;
    for (token, offset) in tokens.iter().zip(&offsets) {
        assert_eq!(*offset, at);
        at += token.chars().count() as u64;
    }
    w.shutdown(Duration::from_secs(1)).await;
}
