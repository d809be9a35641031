//! Canary generations: health checks that exercise the engine, not just its
//! HTTP thread. An idle worker (nothing in flight from this gateway) that
//! answered no request for `canary_interval_ms` is sent a one-token
//! generation; while the last one failed or outlasted
//! `canary_timeout_ms`, its probes fail. The state machine is pure; `send`
//! is the request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;

use crate::body;
use crate::upstream::{self, Upstream};

/// A worker's canary state.
#[derive(Debug, Clone)]
pub struct Canary {
    /// When the worker last answered a request (a canary included).
    last_answered: Instant,
    /// When the last canary was sent; `None` before the first.
    last_sent: Option<Instant>,
    in_flight: bool,
    /// Why the last canary failed; cleared by one that succeeds.
    failure: Option<String>,
}

impl Canary {
    pub fn new(now: Instant) -> Canary {
        Canary {
            last_answered: now,
            last_sent: None,
            in_flight: false,
            failure: None,
        }
    }

    /// A request was answered: the engine works, no canary is due for a while.
    pub fn answered(&mut self, now: Instant) {
        self.last_answered = self.last_answered.max(now);
    }

    /// Whether to send a canary now, and if so, marks one in flight: the
    /// worker is not `busy` with requests (whose answers will tell), has
    /// answered nothing for `interval`, has no canary in flight, and the
    /// last was sent at least `interval` ago.
    pub fn start(&mut self, now: Instant, interval: Duration, busy: bool) -> bool {
        let quiet = !busy && now.saturating_duration_since(self.last_answered) >= interval;
        let spaced = self
            .last_sent
            .is_none_or(|sent| now.saturating_duration_since(sent) >= interval);
        let due = !interval.is_zero() && quiet && spaced && !self.in_flight;
        if due {
            self.in_flight = true;
            self.last_sent = Some(now);
        }
        due
    }

    /// The outcome of the canary in flight.
    pub fn finish(&mut self, outcome: Result<(), String>, now: Instant) {
        self.in_flight = false;
        match outcome {
            Ok(()) => {
                self.failure = None;
                self.answered(now);
            }
            Err(why) => self.failure = Some(why),
        }
    }

    /// Why the last canary failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}

/// One chat completion of one token for `model`, within `timeout`.
pub async fn send(
    upstream: &Upstream,
    url: &http::Uri,
    model: &str,
    credential: Option<&http::HeaderValue>,
    timeout: Duration,
) -> Result<(), String> {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "temperature": 0,
    });
    let mut req = http::Request::post(upstream::uri(url, "/v1/chat/completions"))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(credential) = credential {
        req = req.header(http::header::AUTHORIZATION, credential);
    }
    let req = req
        .body(body::full(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let answer = async {
        let resp = upstream
            .request(req)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("answer broke: {e}"))?
            .to_bytes();
        let parsed: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| format!("status {status}, not JSON"))?;
        if !status.is_success() || parsed.get("choices").is_none() {
            return Err(format!("status {status}"));
        }
        Ok(())
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn only_a_quiet_worker_gets_a_canary_one_at_a_time() {
        let t0 = Instant::now();
        let mut c = Canary::new(t0);
        assert!(!c.start(t0, Duration::ZERO, false), "off");
        assert!(
            !c.start(t0 + SECOND / 2, SECOND, false),
            "answered recently"
        );
        c.answered(t0 + SECOND / 2);
        assert!(!c.start(t0 + SECOND, SECOND, false));
        assert!(
            c.start(t0 + 2 * SECOND, SECOND, false),
            "quiet for a whole interval"
        );
        assert!(
            !c.start(t0 + 4 * SECOND, SECOND, false),
            "one in flight at a time"
        );
        assert!(
            !Canary::new(t0).start(t0 + 2 * SECOND, SECOND, true),
            "busy with requests"
        );
        c.finish(Err("status 500".into()), t0 + 4 * SECOND);
        assert_eq!(c.failure(), Some("status 500"));
        assert!(
            c.start(t0 + 4 * SECOND, SECOND, false),
            "the last was sent long ago"
        );
        c.finish(Ok(()), t0 + 5 * SECOND);
        assert_eq!(c.failure(), None);
        assert!(
            !c.start(t0 + 5 * SECOND, SECOND, false),
            "the canary's answer counts"
        );
    }
}
