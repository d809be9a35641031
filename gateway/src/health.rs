//! Worker health, two ways: active probes of `/health` with consecutive
//! thresholds, and a passive circuit breaker fed by real requests, with
//! exponential ejection and a single half-open trial. Both state machines are
//! pure; `run_probes` is the thin I/O loop around the first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use protocol::HealthReport;

use crate::config::{BreakerConfig, HealthConfig};
use crate::live::Shared;
use crate::metrics;
use crate::pools::{Pool, Worker};
use crate::upstream::{self, Upstream};

/// What active probes say of a worker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ProbeState {
    /// Not probed yet: routable, so a fresh gateway serves at once; the first
    /// probe decides.
    #[default]
    Unknown,
    Healthy {
        failures: u32,
    },
    Unhealthy {
        successes: u32,
    },
}

impl ProbeState {
    pub fn routable(self) -> bool {
        !matches!(self, ProbeState::Unhealthy { .. })
    }

    pub fn name(self) -> &'static str {
        match self {
            ProbeState::Unknown => "unknown",
            ProbeState::Healthy { .. } => "healthy",
            ProbeState::Unhealthy { .. } => "unhealthy",
        }
    }

    /// The state after one more probe.
    pub fn record(self, ok: bool, config: &HealthConfig) -> ProbeState {
        match (self, ok) {
            (ProbeState::Unknown, true) => ProbeState::Healthy { failures: 0 },
            (ProbeState::Unknown, false) => ProbeState::Unhealthy { successes: 0 },
            (ProbeState::Healthy { .. }, true) => ProbeState::Healthy { failures: 0 },
            (ProbeState::Healthy { failures }, false)
                if failures + 1 >= config.unhealthy_threshold =>
            {
                ProbeState::Unhealthy { successes: 0 }
            }
            (ProbeState::Healthy { failures }, false) => ProbeState::Healthy {
                failures: failures + 1,
            },
            (ProbeState::Unhealthy { successes }, true)
                if successes + 1 >= config.healthy_threshold =>
            {
                ProbeState::Healthy { failures: 0 }
            }
            (ProbeState::Unhealthy { successes }, true) => ProbeState::Unhealthy {
                successes: successes + 1,
            },
            (ProbeState::Unhealthy { .. }, false) => ProbeState::Unhealthy { successes: 0 },
        }
    }
}

/// A circuit breaker: closed, open (ejected) until a deadline, then half-open
/// with one trial request whose outcome closes or reopens it.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    /// Ejections in a row; doubles the next ejection.
    ejections: u32,
    failure_threshold: u32,
    base: Duration,
    max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

impl Breaker {
    pub fn new(config: &BreakerConfig) -> Breaker {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
            ejections: 0,
            failure_threshold: config.failure_threshold,
            base: Duration::from_millis(config.base_ejection_ms),
            max: Duration::from_millis(config.max_ejection_ms),
        }
    }

    pub fn name(&self, now: Instant) -> &'static str {
        match self.state {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { until } if now < until => "open",
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => "half_open",
        }
    }

    /// Whether routing may consider this worker now (without taking the trial).
    pub fn available(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { trial_in_flight } => !trial_in_flight,
        }
    }

    /// Claims the right to send one request; a half-open breaker grants it once.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now < until => false,
            BreakerState::Open { .. }
            | BreakerState::HalfOpen {
                trial_in_flight: false,
            } => {
                self.state = BreakerState::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
            BreakerState::HalfOpen {
                trial_in_flight: true,
            } => false,
        }
    }

    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
        self.ejections = 0;
    }

    /// Records a failure; returns true when it ejects the worker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        let eject = match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.failure_threshold => {
                self.state = BreakerState::Closed {
                    failures: failures + 1,
                };
                false
            }
            BreakerState::Open { .. } => false,
            BreakerState::Closed { .. } | BreakerState::HalfOpen { .. } => true,
        };
        if eject {
            let backoff = self
                .base
                .saturating_mul(1 << self.ejections.min(16))
                .min(self.max);
            self.state = BreakerState::Open {
                until: now + backoff,
            };
            self.ejections += 1;
        }
        eject
    }

    /// Gives back an unused half-open trial (the attempt never reached the worker's verdict).
    pub fn release_trial(&mut self) {
        if let BreakerState::HalfOpen {
            trial_in_flight: true,
        } = self.state
        {
            self.state = BreakerState::HalfOpen {
                trial_in_flight: false,
            };
        }
    }
}

/// Probes every worker on `config.interval_ms` until the task is dropped.
pub async fn run_probes(live: Shared, upstream: Upstream, config: HealthConfig) {
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let registry = live.load().registry.clone();
        let probes = registry.pools().iter().flat_map(|pool| {
            pool.workers
                .iter()
                .map(|w| probe_one(pool, w.clone(), &upstream, &config))
        });
        futures_util::future::join_all(probes).await;
    }
}

async fn probe_one(pool: &Pool, worker: Arc<Worker>, upstream: &Upstream, config: &HealthConfig) {
    let report = tokio::time::timeout(
        Duration::from_millis(config.timeout_ms),
        fetch_report(upstream, &worker.url),
    )
    .await
    .unwrap_or(None);
    let ok = report.as_ref().is_some_and(|r| r.status == "ok");
    if let Some(report) = report {
        worker.report_load(report.load, std::time::Instant::now());
    }
    let (before, after) = {
        let mut probe = worker.probe.lock().unwrap();
        let before = *probe;
        *probe = before.record(ok, config);
        (before, *probe)
    };
    if before.routable() != after.routable() || before == ProbeState::Unknown {
        metrics::worker_healthy(&worker.pool, &worker.id, after.routable());
        if after.routable() {
            tracing::info!(worker = %worker.id, pool = %worker.pool, "worker healthy");
        } else {
            tracing::warn!(worker = %worker.id, pool = %worker.pool, "worker unhealthy");
            // A dead worker's cache died with it; if it comes back, its events resync it.
            pool.prefix.remove_worker(&worker.id);
        }
    }
}

/// A worker's `/health` answer; `None` when it gave none that parses.
pub async fn fetch_report(upstream: &Upstream, url: &http::Uri) -> Option<HealthReport> {
    let req = http::Request::get(upstream::uri(url, "/health"))
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
        .ok()?;
    let resp = upstream.request(req).await.ok()?;
    let ok_status = resp.status().is_success();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let mut report: HealthReport = serde_json::from_slice(&body).ok()?;
    if !ok_status && report.status == "ok" {
        report.status = "unavailable".to_string();
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> HealthConfig {
        HealthConfig {
            interval_ms: 1,
            timeout_ms: 1,
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }

    #[test]
    fn probes_need_consecutive_results() {
        let c = health();
        let s = ProbeState::Unknown.record(true, &c);
        assert!(s.routable());
        let s = s.record(false, &c);
        assert!(s.routable(), "one failure is below the threshold");
        let s = s.record(true, &c).record(false, &c);
        assert!(s.routable(), "a success resets the count");
        let s = s.record(false, &c);
        assert!(!s.routable());
        let s = s.record(true, &c);
        assert!(!s.routable());
        assert!(s.record(true, &c).routable());
    }

    fn breaker() -> Breaker {
        Breaker::new(&BreakerConfig {
            failure_threshold: 2,
            base_ejection_ms: 100,
            max_ejection_ms: 250,
        })
    }

    #[test]
    fn breaker_ejects_and_recovers_through_one_trial() {
        let mut b = breaker();
        let t0 = Instant::now();
        assert!(!b.on_failure(t0));
        assert!(b.on_failure(t0), "second failure ejects");
        assert!(!b.available(t0));
        assert!(!b.try_acquire(t0 + Duration::from_millis(99)));
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.available(t1));
        assert!(b.try_acquire(t1), "half-open grants one trial");
        assert!(!b.try_acquire(t1), "and only one");
        b.on_success();
        assert!(b.try_acquire(t1) && b.try_acquire(t1));
    }

    #[test]
    fn failed_trial_doubles_ejection_up_to_max() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.on_failure(t0);
        b.on_failure(t0); // open 100ms
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_acquire(t1));
        assert!(b.on_failure(t1)); // open 200ms
        assert!(!b.available(t1 + Duration::from_millis(199)));
        let t2 = t1 + Duration::from_millis(200);
        assert!(b.try_acquire(t2));
        assert!(b.on_failure(t2)); // 400ms capped at 250
        assert!(b.available(t2 + Duration::from_millis(250)));
    }

    #[test]
    fn released_trial_can_be_taken_again() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.on_failure(t0);
        b.on_failure(t0);
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_acquire(t1));
        b.release_trial();
        assert!(b.try_acquire(t1));
    }
}
