//! The admin listener: Prometheus metrics, liveness, readiness (503 while
//! draining or while some pool cannot route, see `routable`) and a JSON
//! status of every pool. With API keys, `/metrics` and `/status` take an
//! admin key; `/live` and `/ready` stay open for probes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::Response;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::api::Gateway;
use crate::body::{self, Body};
use crate::metrics;
use crate::routable;

pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub draining: Arc<AtomicBool>,
    pub prometheus: PrometheusHandle,
}

pub async fn handle(admin: Arc<Admin>, req: http::Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let open = matches!(path, "/live" | "/ready");
    if !open {
        if let Err(e) = admin.gateway.tenancy.admin(req.headers()) {
            return crate::error::response(&e);
        }
    }
    match path {
        "/metrics" => {
            export_state(&admin.gateway);
            Response::builder()
                .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(body::full(admin.prometheus.render()))
                .expect("static response parts are valid")
        }
        "/live" => body::json(200, r#"{"status":"live"}"#),
        "/ready" => {
            let unroutable = unroutable(&admin.gateway).into_iter().next();
            let (status, body) = if admin.draining.load(Ordering::Relaxed) {
                (503, json!({ "status": "draining" }))
            } else if let Some((_, reason)) = unroutable {
                // A load balancer takes this gateway out; healthy ones stay.
                (
                    503,
                    json!({ "status": "pool_unroutable", "reason": reason }),
                )
            } else {
                (200, json!({ "status": "ready" }))
            };
            body::json(status, body.to_string())
        }
        "/status" => body::json(200, status(&admin).to_string()),
        _ => body::json(404, r#"{"error":"not found"}"#),
    }
}

/// Gauges read as of this scrape, and every counter that has not moved yet
/// at 0 (see `metrics::pool_counters`).
fn export_state(gw: &Gateway) {
    let live = gw.live();
    let now = Instant::now();
    if gw.bus.is_some() {
        metrics::bus_connected(gw.bus_up());
    }
    metrics::gateway_counters(gw.control.is_some());
    let unroutable = unroutable(gw);
    let mut zones = std::collections::HashMap::new();
    for pool in live.registry.pools() {
        let (exact, approx) = pool.prefix.sizes();
        metrics::index_entries(&pool.name, exact, approx);
        metrics::pool_routable(&pool.name, !unroutable.iter().any(|(p, _)| *p == pool.name));
        let ids: Vec<&str> = pool.workers.iter().map(|w| w.id.as_str()).collect();
        metrics::pool_counters(&pool.name, &ids);
        for w in &pool.workers {
            // A worker silent past `bus.load_stale_ms` reports no demand:
            // an autoscaler must not scale on what it said last.
            let load = w.fresh_load(now, gw.load_stale).unwrap_or_default();
            metrics::worker_load(&pool.name, &w.id, &load);
            let shifted = w.zone_shifted.load(Ordering::Relaxed);
            *zones.entry(w.zone.as_str()).or_insert(false) |= shifted;
        }
    }
    for (zone, shifted) in zones {
        metrics::zone_shifted(zone, shifted);
    }
}

/// Each pool in force that cannot route, and why.
fn unroutable(gw: &Gateway) -> Vec<(String, String)> {
    let live = gw.live();
    let now = Instant::now();
    live.registry
        .pools()
        .iter()
        .filter_map(|pool| {
            let policy = pool.policy.current();
            let problem = routable::problem(&live.config, pool, policy.as_deref(), now)?;
            Some((pool.name.clone(), problem))
        })
        .collect()
}

fn status(admin: &Admin) -> serde_json::Value {
    let gw = &admin.gateway;
    let live = gw.live();
    let now = Instant::now();
    let unroutable = unroutable(gw);
    let pools: Vec<_> = live
        .registry
        .pools()
        .iter()
        .map(|pool| {
            let workers: Vec<_> = pool
                .workers
                .iter()
                .map(|w| {
                    json!({
                        "id": w.id,
                        "url": w.url.to_string(),
                        "zone": w.zone,
                        "labels": w.labels,
                        "engine": w.engine.kind,
                        "health": w.probe.lock().unwrap().name(),
                        "cordoned": w.cordoned.load(Ordering::Relaxed),
                        "zone_shifted": w.zone_shifted.load(Ordering::Relaxed),
                        "problem": *w.problem.lock().unwrap(),
                        "breaker": w.breaker.lock().unwrap().name(now),
                        "in_flight": w.in_flight(),
                        "load": w.fresh_load(now, gw.load_stale),
                        "kv_events": pool.prefix.is_followed(&w.id),
                        "cached_blocks": pool.prefix.exact_blocks(&w.id),
                        "block_size": *w.reported_block_size.lock().unwrap(),
                    })
                })
                .collect();
            json!({
                "name": pool.name,
                "models": pool.models,
                "block_size": pool.block_size,
                "policy": pool.policy.status(),
                "shadow": (pool.shadow_sample > 0.0).then(|| pool.shadow.status(pool.shadow_sample)),
                "strategy": live.config.routing.strategy,
                "workers": workers,
                "unroutable": unroutable.iter().find(|(p, _)| *p == pool.name).map(|(_, why)| why),
            })
        })
        .collect();
    json!({
        "zone": live.config.zone,
        "draining": admin.draining.load(Ordering::Relaxed),
        "bus": match &gw.bus { None => "none", Some(_) if gw.bus_up() => "connected", Some(_) => "disconnected" },
        "control": gw.control.as_ref().map(|c| c.status()),
        "pools": pools,
    })
}
