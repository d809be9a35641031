//! Active health probes: every worker on an interval, by its engine's
//! conventions (`engine`): is it up, does it serve its pool's models, and
//! what load it reports or its metrics tell. Each verdict feeds the worker's
//! probe state machine (`health`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use protocol::HealthReport;

use crate::canary;
use crate::config::HealthConfig;
use crate::engine::{self, EngineKind};
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
    let checked = check(upstream, &worker, &pool.models, pool.credential.as_ref());
    let verdict = tokio::time::timeout(config.timeout, checked)
        .await
        .unwrap_or(Err(None))
        .and_then(|()| canary(pool, &worker, upstream, config));
    let ok = verdict.is_ok();
    *worker.problem.lock().unwrap() = verdict.err().flatten();
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
            let problem = worker.problem.lock().unwrap().clone().unwrap_or_default();
            tracing::warn!(worker = %worker.id, pool = %worker.pool, %problem, "worker unhealthy");
            // A dead worker's cache died with it; if it comes back, its events resync it.
            pool.prefix.remove_worker(&worker.id);
        }
    }
}

/// Sends `worker` a canary generation when one is due, off the probe round
/// (a hung engine must not hold up the other workers' probes); the verdict
/// is the last finished canary's.
fn canary(
    pool: &Pool,
    worker: &Arc<Worker>,
    upstream: &Upstream,
    config: &HealthConfig,
) -> Result<(), Option<String>> {
    let mut state = worker.canary.lock().unwrap();
    if state.start(
        Instant::now(),
        config.canary_interval,
        worker.in_flight() > 0,
    ) {
        let (worker, upstream) = (worker.clone(), upstream.clone());
        let model = pool.models[0].clone();
        let credential = pool.credential.clone();
        let timeout = config.canary_timeout;
        // Not awaited by shutdown: it is bounded by its timeout, and only
        // updates the worker it holds.
        tokio::spawn(async move {
            let outcome =
                canary::send(&upstream, &worker.url, &model, credential.as_ref(), timeout).await;
            metrics::canary(&worker.pool, outcome.is_ok());
            if let Err(why) = &outcome {
                tracing::warn!(worker = %worker.id, pool = %worker.pool, %why, "canary generation failed");
            }
            worker
                .canary
                .lock()
                .unwrap()
                .finish(outcome, Instant::now());
        });
    }
    match state.failure() {
        Some(why) => Err(Some(format!("canary generation failed: {why}"))),
        None => Ok(()),
    }
}

/// Whether `worker` is up and serves every model of its pool, by its
/// engine's conventions, keeping the load it reports or its metrics tell on
/// the way. `Err(Some(why))` when it answered but cannot serve the pool,
/// `Err(None)` when it did not answer as up. `credential`: what the pool's
/// engines require (vLLM's `--api-key` guards `/v1/models`).
async fn check(
    upstream: &Upstream,
    worker: &Worker,
    models: &[String],
    credential: Option<&http::HeaderValue>,
) -> Result<(), Option<String>> {
    let served = match worker.engine.kind {
        EngineKind::Llmgw => {
            let report = fetch_report(upstream, &worker.url).await.ok_or(None)?;
            worker.report_load(report.load, Instant::now());
            if report.status != "ok" {
                return Err(None);
            }
            vec![report.model]
        }
        kind => {
            let health = upstream::uri(&worker.url, kind.health_path());
            let (status, body) = get(upstream, health, credential).await.ok_or(None)?;
            if !status.is_success() {
                return Err(None);
            }
            let list = match kind {
                EngineKind::Openai => body,
                _ => {
                    get(
                        upstream,
                        upstream::uri(&worker.url, "/v1/models"),
                        credential,
                    )
                    .await
                    .filter(|(status, _)| status.is_success())
                    .ok_or(None)?
                    .1
                }
            };
            if let Some(url) = &worker.engine.metrics_url {
                // The engine's credential goes to the engine only, not to a
                // metrics endpoint elsewhere.
                let same_host = url.authority() == worker.url.authority();
                let credential = credential.filter(|_| same_host);
                // A failed scrape keeps no figure: the last one goes stale.
                if let Some((_, text)) = get(upstream, url.clone(), credential).await {
                    let text = String::from_utf8_lossy(&text);
                    if let Some(load) = engine::load_from_metrics(kind, &text) {
                        worker.report_load(load, Instant::now());
                    }
                }
            }
            engine::served_models(&list)
                .ok_or_else(|| Some("`/v1/models` is not an OpenAI model list".to_string()))?
        }
    };
    engine::model_problem(models, &served).map_or(Ok(()), |problem| Err(Some(problem)))
}

/// A GET's status and body; `None` when no answer came.
async fn get(
    upstream: &Upstream,
    uri: http::Uri,
    credential: Option<&http::HeaderValue>,
) -> Option<(http::StatusCode, Bytes)> {
    let mut req = http::Request::get(uri);
    if let Some(credential) = credential {
        req = req.header(http::header::AUTHORIZATION, credential);
    }
    let req = req
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
        .ok()?;
    let resp = upstream.request(req).await.ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// A worker's `/health` answer; `None` when it gave none that parses.
pub async fn fetch_report(upstream: &Upstream, url: &http::Uri) -> Option<HealthReport> {
    let (status, body) = get(upstream, upstream::uri(url, "/health"), None).await?;
    let mut report: HealthReport = serde_json::from_slice(&body).ok()?;
    if !status.is_success() && report.status == "ok" {
        report.status = "unavailable".to_string();
    }
    Some(report)
}
