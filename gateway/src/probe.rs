//! Active health probes: every worker's `/health` on an interval, each
//! answer fed to its probe state machine (`health`) and its load report kept.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use protocol::HealthReport;

use crate::config::HealthConfig;
use crate::health::ProbeState;
use crate::live::Shared;
use crate::metrics;
use crate::pools::Pool;
use crate::upstream::{self, Upstream};
use crate::worker::Worker;

/// Probes every worker on `config.interval_ms` until the task is dropped.
pub async fn run_probes(live: Shared, upstream: Upstream, config: HealthConfig) {
    let mut tick = tokio::time::interval(config.interval);
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
    let report = tokio::time::timeout(config.timeout, fetch_report(upstream, &worker.url))
        .await
        .unwrap_or(None);
    let ok = report.as_ref().is_some_and(|r| r.status == "ok");
    if let Some(report) = report {
        worker.report_load(report.load, Instant::now());
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
