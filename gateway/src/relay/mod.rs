//! Relays a worker's answer to the client frame by frame, never buffering a
//! stream, while measuring time to first token, inter-token latency and
//! duration. It holds the request's in-flight and admission guards, so both
//! last exactly as long as the body: a client that goes away drops it, which
//! drops the upstream body and so cancels the worker's request.
//!
//! A stream whose worker breaks once the client has bytes (the connection
//! reset or closed before `[DONE]`, an error event, silence past
//! `retry.stream_stall_ms`) is continued on the next candidate: `transcript`
//! follows what the client was sent, `resume` asks another worker for the
//! rest, and the client reads one stream. When that cannot be done (no
//! candidate left, `retry.max_migrations` reached, an answer no engine could
//! continue faithfully) the stream ends with an OpenAI error event instead of
//! a silent cut.

pub mod resume;
pub mod sse;
pub mod transcript;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use protocol::{ApiError, BlockHash, ErrorKind};

use crate::admit::Permit;
use crate::body::{Body, BoxError};
use crate::engine::EngineKind;
use crate::failover::{self, Learn, Served, Target, UpstreamRequest};
use crate::live::Live;
use crate::metrics;
use crate::parse::Endpoint;
use crate::pools::Pool;
use crate::tenancy::{Outcome, Ticket};
use crate::upstream::Upstream;
use crate::worker::InFlight;
use tracing::Instrument;
use transcript::{Rewrite, Seen, Transcript};

/// Every `reason` and `outcome` of `llmgw_migrations_total`.
pub const BREAK_REASONS: [&str; 4] = ["reset", "closed", "error_event", "stall"];
pub const MIGRATION_OUTCOMES: [&str; 3] = ["continued", "failed", "exhausted"];

/// Why a stream broke, as counted in `llmgw_migrations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    /// The connection failed mid-body.
    Reset,
    /// The body ended before `[DONE]`.
    Closed,
    /// The worker sent an error event.
    ErrorEvent,
    /// The worker went silent past `retry.stream_stall_ms`.
    Stall,
}

impl Break {
    fn reason(self) -> &'static str {
        match self {
            Break::Reset => "reset",
            Break::Closed => "closed",
            Break::ErrorEvent => "error_event",
            Break::Stall => "stall",
        }
    }
}

/// Everything needed to ask other workers for the rest of a stream.
pub struct Continue {
    pub live: Arc<Live>,
    pub pool: Arc<Pool>,
    pub upstream: Upstream,
    /// Candidates not yet tried, in the policy's order.
    pub remaining: std::vec::IntoIter<Target>,
    /// The client's request.
    pub body: Bytes,
    pub endpoint: Endpoint,
    /// Choices the request asked for (`n`).
    pub choices: u32,
    pub request_id: http::HeaderValue,
    /// The request's trace context: continuations belong to its trace.
    pub trace: http::HeaderMap,
    pub hashes: Vec<BlockHash>,
}

/// A stream being followed so it can be continued.
struct Follow {
    events: sse::Events,
    transcript: Transcript,
    rewrite: Option<Rewrite>,
    next: Continue,
    migrations: u32,
}

pub struct Relay {
    first: Option<Bytes>,
    /// The rest of a stream; `None` when `first` was the whole body.
    rest: Option<Incoming>,
    /// Set for streams that may be continued elsewhere.
    follow: Option<Follow>,
    /// A break seen in a frame whose earlier events still went out.
    broken: Option<Break>,
    ended: bool,
    stall: Duration,
    observer: Observer,
    in_flight: InFlight,
    _permit: Permit,
    /// What the answer is counted against, settled when the relay ends.
    ticket: Option<Ticket>,
    /// The answer's status, for its usage record.
    status: u16,
    /// The usage of a whole answer, as the engine reported it.
    reported: Option<transcript::Reported>,
}

/// Metrics and clocks of one relayed response.
struct Observer {
    metrics: Arc<metrics::ModelMetrics>,
    stream: bool,
    started: Instant,
    first_frame: Option<Instant>,
    last_frame: Option<Instant>,
}

impl Relay {
    /// `follow`: what a stream needs to be continued elsewhere and counted;
    /// `None` for answers that are not streamed, or not followed.
    /// `held`: the admission permit, the request's ticket and the answer's status.
    pub fn new(
        served: (InFlight, Bytes, Option<Incoming>),
        follow: Option<Continue>,
        metrics: &Arc<metrics::ModelMetrics>,
        (stream, stall): (bool, Duration),
        started: Instant,
        (permit, ticket, status): (Permit, Ticket, u16),
    ) -> Relay {
        let (in_flight, first, rest) = served;
        let with_tokens = in_flight.worker().engine.kind == EngineKind::Llmgw;
        // A whole answer is in `first`.
        let reported = (rest.is_none() && !stream)
            .then(|| transcript::usage_of(&first))
            .flatten();
        Relay {
            ticket: Some(ticket),
            status,
            reported,
            first: Some(first),
            rest,
            follow: follow.map(|next| Follow {
                events: sse::Events::default(),
                transcript: Transcript::new(with_tokens, next.choices),
                rewrite: None,
                next,
                migrations: 0,
            }),
            broken: None,
            ended: false,
            stall,
            observer: Observer {
                metrics: Arc::clone(metrics),
                stream,
                started,
                first_frame: None,
                last_frame: None,
            },
            in_flight,
            _permit: permit,
        }
    }

    /// The response body.
    pub fn into_body(self) -> Body {
        // Hyper polls the body after the handler returned: its logs still
        // belong to the request's span.
        let span = tracing::Span::current();
        let frames = futures_util::stream::unfold(self, move |mut relay| {
            let span = span.clone();
            async move {
                let frame = relay.next().await?;
                Some((frame, relay))
            }
            .instrument(span)
        });
        StreamBody::new(frames).boxed()
    }

    async fn next(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(why) = self.broken.take() {
                if why == Break::Stall {
                    metrics::stalled(&self.observer.metrics.pool);
                }
                if let Some(end) = self.end_if_answered() {
                    return end;
                }
                if let Err(e) = self.migrate(why).await {
                    return self.end_with(why, e);
                }
                continue;
            }
            let read = match self.first.take() {
                Some(first) => Ok(Some(first)),
                None => self.read().await,
            };
            let data = match read {
                Ok(Some(data)) => data,
                Ok(None) if self.follow.is_none() => {
                    self.ended = true;
                    return None;
                }
                Ok(None) => {
                    // Whether it was whole is for the break's handling to say.
                    self.broken = Some(Break::Closed);
                    continue;
                }
                Err(why) => {
                    self.broken = Some(why);
                    continue;
                }
            };
            let out = match &mut self.follow {
                None => data,
                Some(follow) => match follow.see(data) {
                    Ok(out) => out,
                    Err((out, why)) => {
                        self.broken = Some(why);
                        out
                    }
                },
            };
            if !out.is_empty() {
                self.observer.on_data();
                return Some(Ok(Frame::data(out)));
            }
        }
    }

    /// The next frame of the current worker's body.
    async fn read(&mut self) -> Result<Option<Bytes>, Break> {
        let Some(body) = &mut self.rest else {
            return Ok(None);
        };
        loop {
            match tokio::time::timeout(self.stall, body.frame()).await {
                Err(_) => return Err(Break::Stall),
                Ok(None) => return Ok(None),
                Ok(Some(Err(_))) => return Err(Break::Reset),
                // Trailers have no place in an answer relayed as chunks.
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => return Ok(Some(data)),
                    _ => continue,
                },
            }
        }
    }

    /// How a followed stream ends when its worker went away after the
    /// answer was whole (`None` when it was not): as it was, or, after its
    /// finish but before `[DONE]`, with the `[DONE]` it lacked.
    fn end_if_answered(&mut self) -> Option<Option<Result<Frame<Bytes>, BoxError>>> {
        let transcript = &self.follow.as_ref()?.transcript;
        if transcript.is_complete() {
            self.ended = true;
            return Some(None);
        }
        if transcript.finished {
            self.ended = true;
            let done = Bytes::from_static(b"data: [DONE]\n\n");
            return Some(Some(Ok(Frame::data(done))));
        }
        None
    }

    /// Continues the stream on another worker, or says why not.
    async fn migrate(&mut self, why: Break) -> Result<(), ApiError> {
        let gone = |detail: &str| gone(why, self.stall, detail);
        let broken = Arc::clone(self.in_flight.worker());
        // An error event may be about the request; the rest is the worker's fault.
        if why != Break::ErrorEvent {
            failover::broke(&broken);
        }
        // The broken worker's request is cancelled now, not when a
        // continuation is found.
        self.rest = None;
        let pool = &*self.observer.metrics.pool;
        let Some(follow) = &mut self.follow else {
            return Err(gone("the answer cannot be continued elsewhere"));
        };
        if follow.migrations >= follow.next.live.config.retry.max_migrations {
            metrics::migration(pool, why.reason(), "exhausted");
            return Err(gone("it was continued as often as allowed"));
        }
        follow.migrations += 1;
        let span = tracing::info_span!("migration", reason = why.reason(), from = %broken.id);
        // The request's span has closed: the stream outlives it.
        protocol::traces::continue_trace(&span, &follow.next.trace);
        let served = follow.continuation().instrument(span).await.map_err(|e| {
            metrics::migration(pool, why.reason(), "failed");
            gone(&e.message)
        })?;
        if !served.head.status.is_success() {
            metrics::migration(pool, why.reason(), "failed");
            let status = served.head.status.as_u16();
            return Err(gone(&format!("the next worker answered {status}")));
        }
        let worker = served.in_flight.worker();
        metrics::migration(pool, why.reason(), "continued");
        tracing::warn!(pool, reason = why.reason(), from = %broken.id, to = %worker.id,
            generated = follow.transcript.generated(), "stream continued on another worker");
        follow.events = sse::Events::default();
        if worker.engine.kind == EngineKind::Llmgw {
            follow.rewrite = None;
        } else {
            let before = follow.transcript.generated();
            // From here on its tokens are unknown: counted by text events.
            follow.transcript.tokens = None;
            follow.transcript.text_events = before;
            follow.rewrite = Some(Rewrite {
                id: follow.transcript.id.clone().unwrap_or_default(),
                created: follow.transcript.created.unwrap_or_default(),
                before,
                echo: match (worker.engine.kind, follow.next.endpoint) {
                    (EngineKind::Llamacpp, Endpoint::Chat) => follow.transcript.text.clone(),
                    _ => String::new(),
                },
            });
        }
        self.first = Some(served.first);
        self.rest = served.rest;
        self.in_flight = served.in_flight;
        Ok(())
    }

    /// What ends a response that broke and could not be continued: a stream
    /// gets an OpenAI error event and `[DONE]`, another body an error.
    fn end_with(&mut self, why: Break, error: ApiError) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.ended = true;
        tracing::warn!(pool = %self.observer.metrics.pool, worker = %self.in_flight.worker().id,
            reason = why.reason(), error = %error.message, "answer broke mid-response; ended it");
        if !self.observer.stream {
            return Some(Err(error.message.into()));
        }
        let event = format!("data: {}\n\ndata: [DONE]\n\n", error.to_json());
        Some(Ok(Frame::data(Bytes::from(event))))
    }
}

/// The error for an answer that broke for `why` and could not be continued.
fn gone(why: Break, stall: Duration, detail: &str) -> ApiError {
    let what = match why {
        Break::Stall => format!(
            "the worker sent nothing for {} ms mid-answer",
            stall.as_millis()
        ),
        Break::ErrorEvent => "the worker failed mid-answer".to_string(),
        Break::Reset | Break::Closed => "the worker's connection broke mid-answer".to_string(),
    };
    let kind = match why {
        Break::Stall => ErrorKind::Timeout,
        _ => ErrorKind::UpstreamFailed,
    };
    ApiError::new(kind, format!("{what}, and {detail}; the answer ends here"))
}

impl Follow {
    /// What of `data` goes to the client, learning from each whole event;
    /// with the break when an event reports one (the events before it still go).
    fn see(&mut self, data: Bytes) -> Result<Bytes, (Bytes, Break)> {
        let events = match self.events.push(data) {
            Ok(events) => events,
            Err(sse::TooLong) => return Err((Bytes::new(), Break::Reset)),
        };
        let mut out: Vec<Bytes> = Vec::with_capacity(events.len());
        for event in events {
            match self.transcript.see(event, self.rewrite.as_mut()) {
                Seen::Forward(bytes) if bytes.is_empty() => {}
                Seen::Forward(bytes) => out.push(bytes),
                Seen::Error => return Err((concat(out), Break::ErrorEvent)),
            }
        }
        Ok(concat(out))
    }

    /// Asks the remaining candidates, in order, for the rest of the answer.
    async fn continuation(&mut self) -> Result<Served, ApiError> {
        let next = &mut self.next;
        let original: serde_json::Value = serde_json::from_slice(&next.body)
            .map_err(|_| ApiError::new(ErrorKind::Internal, "the request is not JSON"))?;
        let why_not = std::sync::Mutex::new(None);
        let body_for = |worker: &crate::worker::Worker| {
            resume::continuation(
                &original,
                next.endpoint,
                &self.transcript,
                worker.engine.kind,
            )
            .map_err(|e| *why_not.lock().unwrap() = Some(e))
            .ok()
        };
        let request = UpstreamRequest {
            endpoint: next.endpoint,
            body: &body_for,
            request_id: &next.request_id,
            stream: true,
            stream_tokens: true,
            incoming: &next.trace,
            credential: next.pool.credential.as_ref(),
            prefix: Learn {
                index: &next.pool.prefix,
                strategy: next.live.config.routing.strategy,
                hashes: &next.hashes,
            },
        };
        let retry = &next.live.config.retry;
        let result = failover::send(&next.upstream, retry, &mut next.remaining, &request).await;
        result.map_err(|e| match why_not.into_inner().unwrap() {
            Some(why) if e.kind == ErrorKind::NoHealthyWorker => {
                ApiError::new(ErrorKind::UpstreamFailed, why)
            }
            _ => e,
        })
    }
}

fn concat(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().expect("one part"),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                out.extend_from_slice(&part);
            }
            out.freeze()
        }
    }
}

impl Observer {
    fn on_data(&mut self) {
        if !self.stream {
            return;
        }
        let now = Instant::now();
        match self.last_frame {
            None => {
                self.first_frame = Some(now);
                self.metrics.ttft(now - self.started);
            }
            Some(last) => self.metrics.inter_token(now - last),
        }
        self.last_frame = Some(now);
    }
}

impl Drop for Relay {
    /// The answer is over, whole or not: its ticket is settled.
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let (reported, generated) = match &self.follow {
            Some(f) => (f.transcript.usage, f.transcript.generated()),
            None => (self.reported, 0),
        };
        let started = self.observer.started;
        ticket.finish(Outcome {
            status: self.status,
            worker: Some(self.in_flight.worker().id.clone()),
            reported,
            generated: generated.into(),
            ttft: self.observer.first_frame.map(|t| t - started),
            duration: started.elapsed(),
        });
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.metrics.duration(self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_for_the_metrics() {
        let breaks = [Break::Reset, Break::Closed, Break::ErrorEvent, Break::Stall];
        let reasons: Vec<_> = breaks.iter().map(|b| b.reason()).collect();
        assert_eq!(reasons, BREAK_REASONS);
    }
}
