//! Mirrors the workers' KV caches and load from the bus: applies each
//! worker's event batches to its pool's index in order, asks for a snapshot
//! when one went missing (and for every followed worker after the bus
//! reconnects), and keeps the workers' load reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::bus::{Bus, BusError, Subjects, Topic};
use protocol::{KvEventBatch, KvSnapshot, LoadMessage};

use crate::config::BusConfig;
use crate::live::Shared;
use crate::metrics;
use crate::pools::{Pool, Registry};
use crate::prefix::Source;

/// How often workers still waiting for a snapshot are asked again.
const RESYNC_RETRY: Duration = Duration::from_secs(1);

pub async fn run(bus: Bus, live: Shared, config: BusConfig) -> Result<(), BusError> {
    let subjects = Subjects::new(&config.subject_prefix);
    let mut kv = bus.subscribe(subjects.all(Topic::Kv)).await?;
    let mut load = bus.subscribe(subjects.all(Topic::Load)).await?;
    let mut connects = bus.connects();
    let mut retry = tokio::time::interval(RESYNC_RETRY);
    let resync = Resync {
        bus: bus.clone(),
        subjects: subjects.clone(),
        timeout: config.snapshot_timeout,
    };
    loop {
        let registry = live.load().registry.clone();
        tokio::select! {
            Some(message) = kv.next() => {
                let Some((pool, worker)) = subjects.parse(Topic::Kv, &message.subject) else { continue };
                let Some(pool) = known(&registry, pool, worker) else { continue };
                on_batch(pool, worker, &message.payload, &resync);
            }
            Some(message) = load.next() => {
                let Some((pool, worker)) = subjects.parse(Topic::Load, &message.subject) else { continue };
                let Some(pool) = known(&registry, pool, worker) else { continue };
                on_load(pool, worker, &message.payload);
            }
            Ok(()) = connects.changed() => {
                // Whatever was published while we were away is lost: start over from snapshots.
                for pool in registry.pools() {
                    for worker in pool.prefix.to_resync(true) {
                        resync.spawn(pool.clone(), worker);
                    }
                }
            }
            _ = retry.tick() => {
                for pool in registry.pools() {
                    for worker in pool.prefix.to_resync(false) {
                        resync.spawn(pool.clone(), worker);
                    }
                }
            }
        }
    }
}

/// The pool of a worker this gateway routes to; other pools' and workers' messages are ignored.
fn known<'a>(registry: &'a Registry, pool: &str, worker: &str) -> Option<&'a Arc<Pool>> {
    registry
        .pools()
        .iter()
        .find(|p| p.name == pool && p.worker(worker).is_some())
}

fn on_batch(pool: &Arc<Pool>, worker_id: &str, payload: &[u8], resync: &Resync) {
    let Ok(batch) = serde_json::from_slice::<KvEventBatch>(payload) else {
        tracing::warn!(pool = %pool.name, worker = worker_id, "malformed KV event batch");
        return;
    };
    if batch.worker_id != worker_id || mismatched_block_size(pool, worker_id) {
        return;
    }
    let applied = pool.prefix.apply(&batch, Source::Bus);
    metrics::kv_batch(&pool.name, applied.name());
    if applied.needs_resync() {
        tracing::info!(pool = %pool.name, worker = worker_id, outcome = ?applied, "KV events lost track; resyncing");
        resync.spawn(pool.clone(), worker_id.to_string());
    }
}

fn on_load(pool: &Arc<Pool>, worker_id: &str, payload: &[u8]) {
    let Ok(message) = serde_json::from_slice::<LoadMessage>(payload) else {
        tracing::warn!(pool = %pool.name, worker = worker_id, "malformed load report");
        return;
    };
    let Some(worker) = pool.worker(worker_id) else {
        return;
    };
    worker.report_load(message.load, Instant::now());
    let previous = worker
        .reported_block_size
        .lock()
        .unwrap()
        .replace(message.block_size);
    if message.block_size != pool.block_size && previous != Some(message.block_size) {
        // Its hashes can never match ours: stop mirroring it rather than route on noise.
        tracing::error!(pool = %pool.name, worker = worker_id, worker_block_size = message.block_size,
            pool_block_size = pool.block_size, "block size mismatch; KV events of this worker are ignored");
        metrics::block_size_mismatch(&pool.name, worker_id);
        pool.prefix.remove_worker(worker_id);
    }
}

fn mismatched_block_size(pool: &Pool, worker_id: &str) -> bool {
    pool.worker(worker_id)
        .and_then(|w| *w.reported_block_size.lock().unwrap())
        .is_some_and(|size| size != pool.block_size)
}

/// Asks workers for snapshots.
#[derive(Clone)]
struct Resync {
    bus: Bus,
    subjects: Subjects,
    timeout: Duration,
}

impl Resync {
    /// In the background, so a slow worker never holds up other workers' events.
    fn spawn(&self, pool: Arc<Pool>, worker_id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let subject = this
                .subjects
                .worker(Topic::Snapshot, &pool.name, &worker_id);
            let snapshot = match this.bus.request(subject, Bytes::new(), this.timeout).await {
                Ok(payload) => serde_json::from_slice::<KvSnapshot>(&payload),
                Err(e) => {
                    return tracing::debug!(pool = %pool.name, worker = %worker_id, error = %e, "snapshot request failed")
                }
            };
            match snapshot {
                Ok(snapshot) if snapshot.worker_id == worker_id => {
                    let applied = pool.prefix.resync(&snapshot);
                    metrics::kv_batch(&pool.name, applied.name());
                    tracing::debug!(pool = %pool.name, worker = %worker_id, outcome = ?applied, "resynced");
                }
                _ => tracing::warn!(pool = %pool.name, worker = %worker_id, "malformed snapshot"),
            }
        });
    }
}
