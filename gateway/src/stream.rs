//! Relays a worker's response body to the client frame by frame, never
//! buffering an answer, while measuring time to first token, inter-token
//! latency and duration. It holds the request's in-flight and admission
//! guards, so both last exactly as long as the body: a client that goes away
//! drops it, which drops the upstream body and so cancels the worker's request.
//! A worker silent past `retry.stream_stall_ms` is let go the same way: a
//! stream ends with an OpenAI error event, another body with an error.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use protocol::{ApiError, ErrorKind};
use tokio::time::Sleep;

use crate::admit::Permit;
use crate::body::BoxError;
use crate::metrics;
use crate::worker::InFlight;

pub struct Relay {
    first: Option<Bytes>,
    inner: Incoming,
    observer: Observer,
    /// The longest silence allowed, and when it runs out.
    stall: Duration,
    deadline: Pin<Box<Sleep>>,
    /// The stall was told: nothing more follows.
    ended: bool,
}

/// A request's metric labels: empty until known, and only ever configured
/// names, so a client cannot grow the label set.
#[derive(Debug, Default, Clone)]
pub struct Labels {
    pub model: String,
    pub pool: String,
}

/// Labels and clocks of one relayed response.
struct Observer {
    model: String,
    pool: String,
    stream: bool,
    started: Instant,
    last_frame: Option<Instant>,
    _in_flight: InFlight,
    _permit: Permit,
}

impl Relay {
    /// `first` is a stream's first event, already read off `inner`.
    pub fn new(
        inner: Incoming,
        first: Option<Bytes>,
        labels: &Labels,
        (stream, stall): (bool, Duration),
        started: Instant,
        guards: (InFlight, Permit),
    ) -> Relay {
        let observer = Observer {
            model: labels.model.clone(),
            pool: labels.pool.clone(),
            stream,
            started,
            last_frame: None,
            _in_flight: guards.0,
            _permit: guards.1,
        };
        Relay {
            first,
            inner,
            observer,
            stall,
            deadline: Box::pin(tokio::time::sleep(stall)),
            ended: false,
        }
    }

    /// What ends a response whose worker went silent.
    fn stalled(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        metrics::stalled(&self.observer.pool);
        tracing::warn!(pool = %self.observer.pool, stall_ms = self.stall.as_millis() as u64, "worker went silent mid-response; ended it");
        if !self.observer.stream {
            return Poll::Ready(Some(Err("the worker went silent mid-response".into())));
        }
        let error = ApiError::new(
            ErrorKind::Timeout,
            format!(
                "the worker sent nothing for {} ms; the answer ends here",
                self.stall.as_millis()
            ),
        );
        let event = format!("data: {}\n\ndata: [DONE]\n\n", error.to_json());
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}

impl Observer {
    fn on_data(&mut self) {
        if !self.stream {
            return;
        }
        let now = Instant::now();
        match self.last_frame {
            None => metrics::ttft(&self.model, &self.pool, now - self.started),
            Some(last) => metrics::inter_token(&self.model, &self.pool, now - last),
        }
        self.last_frame = Some(now);
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        metrics::request_duration(&self.model, &self.pool, self.started.elapsed());
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            this.observer.on_data();
            this.deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + this.stall);
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                return this.stalled();
            }
        };
        this.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + this.stall);
        if let Some(Ok(f)) = &frame {
            if f.is_data() {
                this.observer.on_data();
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.first.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.first {
            None => self.inner.size_hint(),
            Some(first) => {
                let mut hint = SizeHint::new();
                hint.set_lower(first.len() as u64 + self.inner.size_hint().lower());
                hint
            }
        }
    }
}
