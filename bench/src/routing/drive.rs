//! Replays the workload against one target, open loop: each request leaves
//! at its scheduled time whether or not earlier ones were answered, and its
//! TTFT is the time from sending to the first SSE chunk carrying content.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::oracle::{Oracle, Ticket};
use super::workload::Request;
use crate::load::HttpClient;

/// Where requests go.
#[derive(Clone)]
pub enum Target {
    /// The gateway's API address; it names the worker in `x-worker-id`.
    Gateway(String),
    Oracle(Arc<Oracle>),
}

/// What one request measured.
#[derive(Default)]
pub struct Outcome {
    pub ttft: Option<Duration>,
    /// When the last byte arrived, from the start of the run.
    pub finished: Duration,
    pub worker: Option<String>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub error: Option<String>,
}

/// Sends every request at its time; returns their outcomes in order.
pub async fn replay(
    client: &HttpClient,
    target: &Target,
    requests: &Arc<Vec<Request>>,
) -> anyhow::Result<Vec<Outcome>> {
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..requests.len())
        .map(|i| {
            let (client, target, requests) = (client.clone(), target.clone(), requests.clone());
            tokio::spawn(async move {
                let request = &requests[i];
                tokio::time::sleep_until(start + request.at).await;
                let mut outcome = Outcome::default();
                if let Err(e) = send(&client, &target, request, &mut outcome).await {
                    outcome.error = Some(e.to_string());
                }
                outcome.finished = start.elapsed();
                outcome
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await?);
    }
    Ok(outcomes)
}

async fn send(
    client: &HttpClient,
    target: &Target,
    request: &Request,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    // Held until the stream ends, so the oracle counts the request in flight as long as the worker does.
    let mut ticket: Option<Ticket> = None;
    let url = match target {
        Target::Gateway(addr) => format!("http://{addr}/v1/chat/completions"),
        Target::Oracle(oracle) => {
            let t = oracle.pick(request);
            outcome.worker = Some(t.worker_id().to_string());
            let url = format!("{}/v1/chat/completions", t.url());
            ticket = Some(t);
            url
        }
    };
    let sent = Instant::now();
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(request.body.clone()))?;
    let resp = client.request(req).await?;
    if let Some(id) = resp.headers().get("x-worker-id") {
        outcome.worker = Some(id.to_str()?.to_string());
    }
    let status = resp.status();
    let mut body = resp.into_body();
    anyhow::ensure!(status.is_success(), "answered {status}");
    let mut buf = Vec::new();
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        // SSE events end with a blank line; a frame may hold several or part of one.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let line = std::str::from_utf8(&event)?.trim();
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let chunk: Value = serde_json::from_str(data)?;
            if let Some(error) = chunk.get("error") {
                anyhow::bail!("stream error: {error}");
            }
            let content = &chunk["choices"][0]["delta"]["content"];
            if outcome.ttft.is_none() && content.as_str().is_some_and(|s| !s.is_empty()) {
                outcome.ttft = Some(sent.elapsed());
                if let Some(t) = ticket.as_mut() {
                    t.first_token();
                }
            }
            let usage = &chunk["usage"];
            if usage.is_object() {
                outcome.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
                outcome.completion_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
                outcome.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0);
            }
        }
    }
    anyhow::ensure!(done, "stream ended without [DONE]");
    anyhow::ensure!(outcome.ttft.is_some(), "no content chunk");
    anyhow::ensure!(outcome.prompt_tokens > 0, "no usage chunk");
    Ok(())
}
