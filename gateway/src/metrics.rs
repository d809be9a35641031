//! Every metric the gateway exports, named in one place (prefix `llmgw_`,
//! unit suffixes), with labels from a small fixed set: model, pool, worker,
//! status, reason. Never request or user ids.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "llmgw_requests_total";
pub const REQUEST_DURATION: &str = "llmgw_request_duration_seconds";
pub const TTFT: &str = "llmgw_time_to_first_token_seconds";
pub const ITL: &str = "llmgw_inter_token_latency_seconds";
pub const WORKER_IN_FLIGHT: &str = "llmgw_worker_in_flight_requests";
pub const WORKER_HEALTHY: &str = "llmgw_worker_healthy";
pub const FAILOVERS: &str = "llmgw_failovers_total";
pub const EJECTIONS: &str = "llmgw_worker_ejections_total";
pub const CANARIES: &str = "llmgw_canary_generations_total";
pub const SHED: &str = "llmgw_requests_shed_total";
pub const CONNECTIONS_REFUSED: &str = "llmgw_connections_refused_total";
pub const ZONE_SHIFTED: &str = "llmgw_zone_shifted";
pub const POOL_ROUTABLE: &str = "llmgw_pool_routable";
pub const BUS_CONNECTED: &str = "llmgw_bus_connected";
pub const WORKER_RUNNING: &str = "llmgw_worker_requests_running";
pub const WORKER_WAITING: &str = "llmgw_worker_requests_waiting";
pub const WORKER_PREFILL_PENDING: &str = "llmgw_worker_prefill_tokens_pending";
pub const WORKER_KV_USAGE: &str = "llmgw_worker_kv_usage_ratio";
pub const STALLS: &str = "llmgw_response_stalls_total";
pub const MIGRATIONS: &str = "llmgw_migrations_total";
pub const KV_BATCHES: &str = "llmgw_kv_event_batches_total";
pub const INDEX_ENTRIES: &str = "llmgw_prefix_index_entries";
pub const BLOCK_SIZE_MISMATCH: &str = "llmgw_block_size_mismatches_total";
pub const POLICY_DECISIONS: &str = "llmgw_policy_decisions_total";
pub const POLICY_ERRORS: &str = "llmgw_policy_errors_total";
pub const PROMPT_BLOCKS: &str = "llmgw_prompt_blocks_total";
pub const PROMPT_BLOCKS_CACHED: &str = "llmgw_prompt_blocks_cached_total";
pub const CONTROL_CHANGES: &str = "llmgw_control_changes_total";
pub const ETCD_CONNECTED: &str = "llmgw_etcd_connected";
pub const CONTROL_REVISION: &str = "llmgw_control_revision";
pub const KEYS_LOADED: &str = "llmgw_api_keys";
pub const KEYS_RELOADS: &str = "llmgw_api_key_reloads_total";
pub const AUTH_FAILURES: &str = "llmgw_auth_failures_total";
pub const RATE_LIMITED: &str = "llmgw_rate_limited_total";
pub const TENANT_REQUESTS: &str = "llmgw_tenant_requests_total";
pub const TENANT_TOKENS: &str = "llmgw_tenant_tokens_total";
pub const QUEUE_LENGTH: &str = "llmgw_queue_length";
pub const QUEUE_WAIT: &str = "llmgw_queue_wait_seconds";
pub const SHADOW_DECISIONS: &str = "llmgw_shadow_decisions_total";

/// The process-wide Prometheus recorder; installed once, however many gateways a process runs.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ];
            let itl = [
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TTFT.into()), &latency))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ITL.into()), &itl))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), &latency))
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist in a test binary; then ours only renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// `outcome`: one of `shadow::OUTCOMES`.
pub fn shadow_decision(pool: &str, outcome: &'static str) {
    counter!(SHADOW_DECISIONS, "pool" => pool.to_string(), "outcome" => outcome).increment(1);
}

pub fn keys_loaded(count: usize) {
    gauge!(KEYS_LOADED).set(count as f64);
}

/// `outcome`: `applied` or `refused` (a keys file that does not parse).
pub fn keys_reload(outcome: &'static str) {
    counter!(KEYS_RELOADS, "outcome" => outcome).increment(1);
}

/// `reason`: `missing`, `unknown` or `expired`.
pub fn auth_failure(reason: &'static str) {
    counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

pub fn rate_limited(tenant: &str) {
    counter!(RATE_LIMITED, "tenant" => tenant.to_string()).increment(1);
}

/// Per key and tenant: operators make keys, clients cannot.
pub fn tenant_request(key: &str, tenant: &str, model: &str, status: u16) {
    counter!(TENANT_REQUESTS, "key" => key.to_string(), "tenant" => tenant.to_string(),
        "model" => model.to_string(), "status" => status.to_string())
    .increment(1);
}

pub fn tenant_tokens(key: &str, tenant: &str, model: &str, kinds: [(&'static str, u64); 3]) {
    for (kind, tokens) in kinds {
        counter!(TENANT_TOKENS, "key" => key.to_string(), "tenant" => tenant.to_string(),
            "model" => model.to_string(), "kind" => kind)
        .increment(tokens);
    }
}

pub fn queue_length(pool: &str, priority: &'static str, waiting: usize) {
    gauge!(QUEUE_LENGTH, "pool" => pool.to_string(), "priority" => priority).set(waiting as f64);
}

pub fn queue_wait(pool: &str, priority: &'static str, waited: Duration) {
    histogram!(QUEUE_WAIT, "pool" => pool.to_string(), "priority" => priority).record(waited);
}

/// A request answered without its model's pool (a bad body, an unknown
/// model, the backstop): counted under empty labels.
pub fn request_unplaced(status: u16) {
    counter!(REQUESTS, "model" => "", "pool" => "", "status" => status.to_string()).increment(1);
}

/// The metrics of one model's requests in one pool, resolved once (see
/// [`PoolMetrics`]) rather than looked up by their labels per request.
#[derive(Debug)]
pub struct ModelMetrics {
    pub model: Arc<str>,
    pub pool: Arc<str>,
    duration: Histogram,
    ttft: Histogram,
    inter_token: Histogram,
    /// `llmgw_requests_total` by status, each resolved at its first answer.
    requests: RwLock<Vec<(u16, Counter)>>,
}

impl ModelMetrics {
    fn new(model: &str, pool: &str) -> ModelMetrics {
        let labels = [("model", model.to_string()), ("pool", pool.to_string())];
        ModelMetrics {
            model: model.into(),
            pool: pool.into(),
            duration: histogram!(REQUEST_DURATION, &labels),
            ttft: histogram!(TTFT, &labels),
            inter_token: histogram!(ITL, &labels),
            requests: RwLock::default(),
        }
    }

    /// Counts a request answered with `status`.
    pub fn request_done(&self, status: u16) {
        let known = |requests: &[(u16, Counter)]| {
            let counter = requests.iter().find(|(s, _)| *s == status)?;
            counter.1.increment(1);
            Some(())
        };
        if known(&self.requests.read().expect("never poisoned")).is_some() {
            return;
        }
        let mut requests = self.requests.write().expect("never poisoned");
        if known(&requests).is_none() {
            let counter = counter!(REQUESTS, "model" => self.model.to_string(),
                "pool" => self.pool.to_string(), "status" => status.to_string());
            counter.increment(1);
            requests.push((status, counter));
        }
    }

    pub fn duration(&self, elapsed: Duration) {
        self.duration.record(elapsed);
    }

    pub fn ttft(&self, elapsed: Duration) {
        self.ttft.record(elapsed);
    }

    pub fn inter_token(&self, elapsed: Duration) {
        self.inter_token.record(elapsed);
    }
}

/// A pool's per-request metrics, resolved when the pool is built.
pub struct PoolMetrics {
    prompt_blocks: Counter,
    prompt_blocks_cached: Counter,
    models: HashMap<String, Arc<ModelMetrics>>,
}

impl PoolMetrics {
    pub fn new(pool: &str, models: &[String]) -> PoolMetrics {
        PoolMetrics {
            prompt_blocks: counter!(PROMPT_BLOCKS, "pool" => pool.to_string()),
            prompt_blocks_cached: counter!(PROMPT_BLOCKS_CACHED, "pool" => pool.to_string()),
            models: models
                .iter()
                .map(|m| (m.clone(), Arc::new(ModelMetrics::new(m, pool))))
                .collect(),
        }
    }

    /// A routed prompt's full blocks, and how many the chosen worker was expected to hold.
    pub fn prompt_blocks(&self, blocks: usize, cached: u32) {
        self.prompt_blocks.increment(blocks as u64);
        self.prompt_blocks_cached.increment(u64::from(cached));
    }

    /// The metrics of `model`, one of the pool's: the registry routes a
    /// pool only the models it lists, from which these were made.
    pub fn model(&self, model: &str) -> Arc<ModelMetrics> {
        Arc::clone(self.models.get(model).expect("one of the pool's models"))
    }
}

/// A worker's in-flight gauge, resolved once with the worker.
pub fn worker_in_flight(pool: &str, worker: &str) -> Gauge {
    gauge!(WORKER_IN_FLIGHT, "pool" => pool.to_string(), "worker" => worker.to_string())
}

pub fn worker_healthy(pool: &str, worker: &str, healthy: bool) {
    gauge!(WORKER_HEALTHY, "pool" => pool.to_string(), "worker" => worker.to_string())
        .set(u8::from(healthy));
}

pub fn failover(pool: &str, reason: &'static str) {
    counter!(FAILOVERS, "pool" => pool.to_string(), "reason" => reason).increment(1);
}

pub fn ejection(pool: &str, worker: &str) {
    counter!(EJECTIONS, "pool" => pool.to_string(), "worker" => worker.to_string()).increment(1);
}

pub fn canary(pool: &str, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!(CANARIES, "pool" => pool.to_string(), "outcome" => outcome).increment(1);
}

/// 1 while `zone` is shifted away.
pub fn zone_shifted(zone: &str, shifted: bool) {
    gauge!(ZONE_SHIFTED, "zone" => zone.to_string()).set(u8::from(shifted));
}

/// Whether `pool` can route a plain request now (see `routable`).
pub fn pool_routable(pool: &str, routable: bool) {
    gauge!(POOL_ROUTABLE, "pool" => pool.to_string()).set(u8::from(routable));
}

pub fn bus_connected(connected: bool) {
    gauge!(BUS_CONNECTED).set(u8::from(connected));
}

/// What a worker last reported of its own load: the demand an autoscaler
/// scales a pool on.
pub fn worker_load(pool: &str, worker: &str, load: &protocol::LoadReport) {
    let labels = [("pool", pool.to_string()), ("worker", worker.to_string())];
    gauge!(WORKER_RUNNING, &labels).set(load.running as f64);
    gauge!(WORKER_WAITING, &labels).set(load.waiting as f64);
    gauge!(WORKER_PREFILL_PENDING, &labels).set(load.prefill_tokens_pending as f64);
    let used = if load.kv_blocks_total == 0 {
        0.0
    } else {
        load.kv_blocks_used as f64 / load.kv_blocks_total as f64
    };
    gauge!(WORKER_KV_USAGE, &labels).set(used);
}

/// Puts every counter a pool can move at 0 until it does: `rate` and
/// `increase` cannot see a series' first event, so an alert on a counter
/// that appears at 1 would miss it.
pub fn pool_counters(pool: &str, workers: &[&str]) {
    let p = || pool.to_string();
    for reason in crate::failover::REASONS {
        counter!(FAILOVERS, "pool" => p(), "reason" => reason).increment(0);
    }
    for reason in crate::relay::BREAK_REASONS {
        for outcome in crate::relay::MIGRATION_OUTCOMES {
            counter!(MIGRATIONS, "pool" => p(), "reason" => reason, "outcome" => outcome)
                .increment(0);
        }
    }
    for worker in workers {
        counter!(EJECTIONS, "pool" => p(), "worker" => worker.to_string()).increment(0);
    }
    for outcome in ["route", "reject"] {
        counter!(POLICY_DECISIONS, "pool" => p(), "outcome" => outcome).increment(0);
    }
    for kind in crate::plugin::PluginError::CALL_KINDS {
        counter!(POLICY_ERRORS, "pool" => p(), "kind" => kind).increment(0);
    }
    for outcome in crate::shadow::OUTCOMES {
        counter!(SHADOW_DECISIONS, "pool" => p(), "outcome" => outcome).increment(0);
    }
    counter!(STALLS, "pool" => p()).increment(0);
    counter!(PROMPT_BLOCKS, "pool" => p()).increment(0);
    counter!(PROMPT_BLOCKS_CACHED, "pool" => p()).increment(0);
}

/// The same for the gateway-wide counters.
pub fn gateway_counters(control: bool) {
    counter!(SHED).increment(0);
    for reason in ["too_many", "header_timeout"] {
        counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(0);
    }
    if control {
        for outcome in ["applied", "refused"] {
            counter!(CONTROL_CHANGES, "outcome" => outcome).increment(0);
        }
    }
}

/// A client connection closed before it was served: `too_many` open, or no
/// request head within `listeners.header_read_timeout_ms`.
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// A response whose worker went silent past `retry.stream_stall_ms`.
pub fn stalled(pool: &str) {
    counter!(STALLS, "pool" => pool.to_string()).increment(1);
}

/// A stream broke mid-answer for `reason`; `outcome`: `continued` on
/// another worker, `failed` (no worker could), or `exhausted` (the limit).
pub fn migration(pool: &str, reason: &'static str, outcome: &'static str) {
    counter!(MIGRATIONS, "pool" => pool.to_string(), "reason" => reason, "outcome" => outcome)
        .increment(1);
}

pub fn shed() {
    counter!(SHED).increment(1);
}

/// A KV event batch or snapshot applied, by outcome (`ok`, `gap`, `stale`, …).
pub fn kv_batch(pool: &str, outcome: &'static str) {
    counter!(KV_BATCHES, "pool" => pool.to_string(), "outcome" => outcome).increment(1);
}

pub fn index_entries(pool: &str, exact: usize, approx: usize) {
    gauge!(INDEX_ENTRIES, "pool" => pool.to_string(), "kind" => "exact").set(exact as f64);
    gauge!(INDEX_ENTRIES, "pool" => pool.to_string(), "kind" => "approx").set(approx as f64);
}

pub fn block_size_mismatch(pool: &str, worker: &str) {
    counter!(BLOCK_SIZE_MISMATCH, "pool" => pool.to_string(), "worker" => worker.to_string())
        .increment(1);
}

/// A WASM policy's decision: `route` or `reject`.
pub fn policy_decision(pool: &str, outcome: &'static str) {
    counter!(POLICY_DECISIONS, "pool" => pool.to_string(), "outcome" => outcome).increment(1);
}

/// A WASM policy failed a call: `trap`, `timeout`, `out_of_memory`, `invalid_decision`, …
pub fn policy_error(pool: &str, kind: &'static str) {
    counter!(POLICY_ERRORS, "pool" => pool.to_string(), "kind" => kind).increment(1);
}

/// A change from etcd: `applied` or `refused`.
pub fn control_change(outcome: &'static str) {
    counter!(CONTROL_CHANGES, "outcome" => outcome).increment(1);
}

pub fn etcd_connected(connected: bool) {
    gauge!(ETCD_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// The etcd revision in force.
pub fn control_revision(revision: i64) {
    gauge!(CONTROL_REVISION).set(revision as f64);
}
