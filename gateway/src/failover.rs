//! Upstream with failover: try the policy's workers in order until one
//! answers, within attempt, per-try and total budgets. The body is replayed
//! from memory. A stream's headers are held until its first event, so a worker
//! that fails before the first token is failed over too; nothing is retried
//! once a byte went to the client (that happens after this module returns).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use protocol::{ApiError, BlockHash, ErrorKind};

use crate::body;
use crate::config::{RetryConfig, Strategy};
use crate::metrics;
use crate::prefix::PrefixState;
use crate::upstream::{self, Upstream};
use crate::worker::{InFlight, Worker};

/// One worker to try, with what it already holds of the prompt.
pub struct Target {
    pub worker: Arc<Worker>,
    /// Leading prompt blocks in its KV cache.
    pub overlap_blocks: u32,
    /// Prompt tokens it would have to prefill (those not in its cache).
    pub uncached_tokens: usize,
}

/// What is sent to every worker tried.
pub struct UpstreamRequest<'a> {
    pub path: &'static str,
    pub body: Bytes,
    pub request_id: &'a str,
    pub stream: bool,
    /// The pool's prefix index learns where each attempt sends the prompt.
    pub prefix: Learn<'a>,
}

/// The prompt's blocks, and the index that learns where they were sent.
pub struct Learn<'a> {
    pub index: &'a PrefixState,
    pub strategy: Strategy,
    pub hashes: &'a [BlockHash],
}

/// A worker's answer that goes back to the client.
pub struct Served {
    pub in_flight: InFlight,
    pub response: http::Response<Incoming>,
    /// A stream's first event, already read off `response`.
    pub first: Option<Bytes>,
    pub attempts: u32,
    /// Leading prompt blocks the serving worker held.
    pub overlap_blocks: u32,
}

/// Why one attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Could not connect, or the connection broke before the response.
    Connect,
    Timeout,
    Status(StatusCode),
    /// The stream ended or broke before its first event.
    Broken,
}

impl Failure {
    fn reason(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status(s) if s == StatusCode::TOO_MANY_REQUESTS => "overloaded",
            Failure::Status(_) => "status_5xx",
            Failure::Broken => "stream_broken",
        }
    }

    /// A worker saying it is busy is not a fault of the worker.
    fn counts_against_worker(self) -> bool {
        self != Failure::Status(StatusCode::TOO_MANY_REQUESTS)
    }

    fn into_api_error(self) -> ApiError {
        match self {
            Failure::Timeout => ApiError::new(ErrorKind::Timeout, "no worker answered in time"),
            Failure::Status(s) if s == StatusCode::TOO_MANY_REQUESTS => ApiError::new(
                ErrorKind::Overloaded,
                "every worker tried is overloaded; retry later",
            ),
            _ => ApiError::new(
                ErrorKind::UpstreamFailed,
                format!("every worker tried failed (last: {})", self.reason()),
            ),
        }
    }
}

pub async fn send(
    upstream: &Upstream,
    retry: &RetryConfig,
    order: Vec<Target>,
    req: &UpstreamRequest<'_>,
) -> Result<Served, ApiError> {
    let deadline = Instant::now() + retry.total_timeout;
    let per_try = retry.per_try_timeout;
    let mut attempts = 0;
    let mut last: Option<Failure> = None;
    for target in order {
        let worker = target.worker;
        let now = Instant::now();
        if attempts >= retry.max_attempts || now >= deadline {
            break;
        }
        // A half-open worker takes a single trial request; others skip it.
        if !worker.breaker.lock().unwrap().try_acquire(now) {
            continue;
        }
        if let Some(failure) = last {
            metrics::failover(&worker.pool, failure.reason());
        }
        attempts += 1;
        // Learned as it is sent, so requests sharing this prefix that arrive
        // during its prefill already follow it, and a failover moves it.
        let learn = &req.prefix;
        learn
            .index
            .learn(learn.strategy, &worker.id, learn.hashes, now);
        let in_flight = worker.start_request();
        // Until the first byte: then the worker's prefill of this prompt is done.
        let _prefill = worker.start_prefill(target.uncached_tokens);
        let budget = per_try.min(deadline - now);
        let outcome = tokio::time::timeout(budget, attempt(upstream, &worker, req))
            .await
            .unwrap_or(Err(Failure::Timeout));
        match outcome {
            Ok((response, first)) => {
                worker.breaker.lock().unwrap().on_success();
                // A 4xx may come from the HTTP front alone, not the engine.
                if response.status().is_success() {
                    worker.canary.lock().unwrap().answered(Instant::now());
                }
                return Ok(Served {
                    in_flight,
                    response,
                    first,
                    attempts,
                    overlap_blocks: target.overlap_blocks,
                });
            }
            Err(failure) => {
                record_failure(&worker, failure);
                last = Some(failure);
            }
        }
    }
    Err(last.map_or_else(
        || {
            ApiError::new(
                ErrorKind::NoHealthyWorker,
                "no healthy worker is available for this model",
            )
        },
        Failure::into_api_error,
    ))
}

fn record_failure(worker: &Worker, failure: Failure) {
    let mut breaker = worker.breaker.lock().unwrap();
    if !failure.counts_against_worker() {
        breaker.release_trial();
        return;
    }
    tracing::warn!(worker = %worker.id, reason = failure.reason(), "upstream attempt failed");
    if breaker.on_failure(Instant::now()) {
        metrics::ejection(&worker.pool, &worker.id);
        tracing::warn!(worker = %worker.id, pool = %worker.pool, "worker ejected");
    }
}

async fn attempt(
    upstream: &Upstream,
    worker: &Worker,
    req: &UpstreamRequest<'_>,
) -> Result<(http::Response<Incoming>, Option<Bytes>), Failure> {
    let request = http::Request::post(upstream::uri(&worker.url, req.path))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", req.request_id)
        .body(body::full(req.body.clone()))
        .map_err(|_| Failure::Connect)?;
    let response = upstream
        .request(request)
        .await
        .map_err(|_| Failure::Connect)?;
    let status = response.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::Status(status));
    }
    if !req.stream || !status.is_success() {
        return Ok((response, None));
    }
    let (parts, mut body) = response.into_parts();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => {
                    return Ok((http::Response::from_parts(parts, body), Some(data)))
                }
                Ok(_) => continue,
                Err(_trailers) => return Err(Failure::Broken),
            },
            Some(Err(_)) | None => return Err(Failure::Broken),
        }
    }
}
