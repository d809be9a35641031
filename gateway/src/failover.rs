//! Upstream with failover: try the policy's workers in order until one
//! answers, within attempt, per-try and total budgets. The body is replayed
//! from memory. A stream's headers are held until its first event, and an
//! answer that is not streamed is read whole, so a worker that fails before
//! the client has a byte is failed over too. A stream that breaks later is
//! continued by `relay`, through this module again.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use protocol::resume::STREAM_TOKENS;
use protocol::{ApiError, BlockHash, ErrorKind};
use tracing::Instrument;

use crate::body;
use crate::config::{RetryConfig, Strategy};
use crate::context;
use crate::engine::EngineKind;
use crate::metrics;
use crate::parse::Endpoint;
use crate::prefix::PrefixState;
use crate::upstream::Upstream;
use crate::worker::{InFlight, Worker};

/// One worker to try, with what it already holds of the prompt.
pub struct Target {
    pub worker: Arc<Worker>,
    /// Leading prompt blocks in its KV cache.
    pub overlap_blocks: u32,
    /// Prompt tokens it would have to prefill (those not in its cache).
    pub uncached_tokens: usize,
}

/// An answer that is not streamed is read whole before the client gets it,
/// up to this size.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// What is sent to the workers tried.
pub struct UpstreamRequest<'a> {
    pub endpoint: Endpoint,
    /// The body for each worker; `None` passes over a worker that cannot
    /// take it (one whose engine cannot continue a stream, say).
    pub body: &'a (dyn Fn(&Worker) -> Option<Bytes> + Sync),
    pub request_id: &'a http::HeaderValue,
    pub stream: bool,
    /// Ask our workers to name each frame's tokens, so that the stream can be
    /// continued elsewhere (`protocol::resume`).
    pub stream_tokens: bool,
    /// The client's headers, whose trace context is passed on when this
    /// gateway records no spans of its own.
    pub incoming: &'a http::HeaderMap,
    /// The pool's own `Authorization` for its engines; the client's never goes.
    pub credential: Option<&'a http::HeaderValue>,
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
    pub head: http::response::Parts,
    /// A stream's first event, or a whole body.
    pub first: Bytes,
    /// The rest of a stream; `None` when `first` is the whole body.
    pub rest: Option<Incoming>,
    pub attempts: u32,
    /// Leading prompt blocks the serving worker held.
    pub overlap_blocks: u32,
}

/// Every `reason` a failover is counted under.
pub const REASONS: [&str; 5] = [
    "connect",
    "timeout",
    "overloaded",
    "status_5xx",
    "stream_broken",
];

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

/// Tries the workers of `order` until one answers; those not reached stay
/// in it, for a continuation.
pub async fn send(
    upstream: &Upstream,
    retry: &RetryConfig,
    order: &mut impl Iterator<Item = Target>,
    req: &UpstreamRequest<'_>,
) -> Result<Served, ApiError> {
    let deadline = Instant::now() + retry.total_timeout;
    let per_try = retry.per_try_timeout;
    let mut attempts = 0;
    let mut last: Option<Failure> = None;
    for target in order.by_ref() {
        let worker = target.worker;
        let now = Instant::now();
        if attempts >= retry.max_attempts || now >= deadline {
            break;
        }
        let Some(body) = (req.body)(&worker) else {
            continue;
        };
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
        let span = tracing::info_span!("upstream attempt", worker = %worker.id, attempt = attempts,
            outcome = tracing::field::Empty);
        let outcome = tokio::time::timeout(budget, attempt(upstream, &worker, req, body))
            .instrument(span.clone())
            .await
            .unwrap_or(Err(Failure::Timeout));
        span.record(
            "outcome",
            outcome.as_ref().err().map_or("answered", |f| f.reason()),
        );
        match outcome {
            Ok((head, first, rest)) => {
                worker.breaker.lock().unwrap().on_success();
                // A 4xx may come from the HTTP front alone, not the engine.
                if head.status.is_success() {
                    worker.canary.lock().unwrap().answered(Instant::now());
                }
                return Ok(Served {
                    in_flight,
                    head,
                    first,
                    rest,
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

/// A stream that broke after its first byte counts against its worker as a
/// failed attempt would.
pub fn broke(worker: &Worker) {
    record_failure(worker, Failure::Broken);
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

/// One worker's answer: its head, then a stream's first event and the rest
/// of it, or a whole body.
type Answer = (http::response::Parts, Bytes, Option<Incoming>);

async fn attempt(
    upstream: &Upstream,
    worker: &Worker,
    req: &UpstreamRequest<'_>,
    body: Bytes,
) -> Result<Answer, Failure> {
    let mut request = http::Request::post(worker.endpoint(req.endpoint).clone())
        .header(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .header(context::REQUEST_ID, req.request_id);
    // This attempt's span is the worker's parent.
    let trace = protocol::traces::headers_for(&tracing::Span::current(), req.incoming);
    for (name, value) in &trace {
        request = request.header(name, value);
    }
    if let Some(credential) = req.credential {
        request = request.header(http::header::AUTHORIZATION, credential);
    }
    if req.stream_tokens && worker.engine.kind == EngineKind::Llmgw {
        request = request.header(STREAM_TOKENS, HeaderValue::from_static("1"));
    }
    let request = request
        .body(body::full(body))
        .map_err(|_| Failure::Connect)?;
    let response = upstream
        .request(request)
        .await
        .map_err(|_| Failure::Connect)?;
    let status = response.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::Status(status));
    }
    let (head, mut body) = response.into_parts();
    if !req.stream || !status.is_success() {
        let whole = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| Failure::Broken)?;
        return Ok((head, whole.to_bytes(), None));
    }
    loop {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => return Ok((head, data, Some(body))),
                Ok(_) => continue,
                Err(_trailers) => return Err(Failure::Broken),
            },
            Some(Err(_)) | None => return Err(Failure::Broken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_for_the_metrics() {
        let failures = [
            Failure::Connect,
            Failure::Timeout,
            Failure::Status(StatusCode::TOO_MANY_REQUESTS),
            Failure::Status(StatusCode::BAD_GATEWAY),
            Failure::Broken,
        ];
        let reasons: Vec<_> = failures.iter().map(|f| f.reason()).collect();
        assert_eq!(reasons, REASONS);
    }
}
