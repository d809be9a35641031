//! Publishes this worker's KV events and load on the bus and answers snapshot
//! requests, so gateways can mirror its prefix cache exactly. One task does
//! all three, so a snapshot always matches the last batch id it names.

use std::collections::HashSet;
use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::bus::{Bus, Subjects, Topic};
use protocol::{BlockHash, KvEvent, KvEventBatch, KvSnapshot, LoadMessage, LoadReport};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::WorkerConfig;
use crate::engine::Engine;

/// Who is publishing, and on which subjects.
pub struct Publisher {
    pub bus: Bus,
    pub subjects: Subjects,
    pub pool: String,
    pub worker_id: String,
    /// This run of the worker; gateways drop what they knew of earlier runs.
    pub instance: u64,
    pub block_size: usize,
    pub debounce: Duration,
    pub heartbeat: Duration,
}

impl Publisher {
    pub fn new(bus: Bus, config: &WorkerConfig) -> Publisher {
        Publisher {
            bus,
            subjects: Subjects::new(&config.bus.subject_prefix),
            pool: config.pool.clone(),
            worker_id: config.id.clone(),
            instance: uuid::Uuid::new_v4().as_u64_pair().0,
            block_size: config.engine.block_size,
            debounce: Duration::from_millis(config.bus.load_debounce_ms.max(1)),
            heartbeat: Duration::from_millis(config.bus.load_heartbeat_ms),
        }
    }

    /// Runs until the engine's event stream ends.
    pub async fn run(
        self,
        engine: Weak<dyn Engine>,
        mut kv_events: UnboundedReceiver<Vec<KvEvent>>,
    ) {
        let snapshot_subject = self
            .subjects
            .worker(Topic::Snapshot, &self.pool, &self.worker_id);
        let mut snapshots = match self.bus.subscribe(snapshot_subject).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot answer snapshot requests");
                None
            }
        };
        let mut held: HashSet<BlockHash> = HashSet::new();
        let mut last_id = 0;
        let mut last_load: Option<(LoadReport, Instant)> = None;
        let mut tick = tokio::time::interval(self.debounce);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                events = kv_events.recv() => {
                    let Some(events) = events else { return };
                    mirror(&mut held, &events);
                    last_id += 1;
                    let batch = KvEventBatch { worker_id: self.worker_id.clone(), instance: self.instance, id: last_id, events };
                    // A lost batch shows as a gap in ids; the gateway then resyncs from a snapshot.
                    self.send(Topic::Kv, &batch).await;
                }
                Some(request) = next(&mut snapshots) => {
                    let snapshot = KvSnapshot {
                        worker_id: self.worker_id.clone(),
                        instance: self.instance,
                        last_id,
                        block_size: self.block_size,
                        blocks: held.iter().copied().collect(),
                    };
                    if let Err(e) = self.bus.reply(&request, json(&snapshot)).await {
                        tracing::warn!(error = %e, "snapshot reply failed");
                    }
                }
                _ = tick.tick() => {
                    let Some(load) = engine.upgrade().map(|e| e.load()) else { return };
                    let due = last_load.is_none_or(|(last, at)| last != load || at.elapsed() >= self.heartbeat);
                    if due {
                        let message = LoadMessage { worker_id: self.worker_id.clone(), instance: self.instance, block_size: self.block_size, load };
                        self.send(Topic::Load, &message).await;
                        last_load = Some((load, Instant::now()));
                    }
                }
            }
        }
    }

    async fn send<T: Serialize>(&self, topic: Topic, value: &T) {
        let subject = self.subjects.worker(topic, &self.pool, &self.worker_id);
        if let Err(e) = self.bus.publish(subject, json(value)).await {
            tracing::debug!(error = %e, "bus publish failed");
        }
    }
}

async fn next(
    subscription: &mut Option<protocol::bus::Subscription>,
) -> Option<protocol::bus::Message> {
    match subscription {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

fn json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("wire types serialize"))
}

/// Applies `events` to the set of held blocks.
fn mirror(held: &mut HashSet<BlockHash>, events: &[KvEvent]) {
    for event in events {
        match event {
            KvEvent::Stored { hashes, .. } => held.extend(hashes.iter().copied()),
            KvEvent::Removed { hashes } => {
                for h in hashes {
                    held.remove(h);
                }
            }
            KvEvent::Cleared => held.clear(),
        }
    }
}
