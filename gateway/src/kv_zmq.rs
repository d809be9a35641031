//! Follows the KV events that vLLM and SGLang engines publish over ZeroMQ:
//! one subscriber per worker with `kv_events`, connected straight to the
//! engine (every gateway replica subscribes to every engine; see the
//! README's "Behind the gateway" for why not a relay). Each batch is
//! rehashed (`rehash`) and applied to the pool's exact index.
//!
//! Missed batches (a sequence gap, a dropped connection, a restarted engine)
//! are asked of the engine's replay socket; when it no longer has them, or
//! there is none, the worker's entries are dropped and rebuilt from what
//! comes next, so the index under-counts for a while but never routes to
//! blocks the engine does not hold.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use protocol::engine_kv::{self, REPLAY_END};
use tokio::task::JoinHandle;
use zeromq::{DealerSocket, Socket, SocketEvent, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use crate::engine::ZmqEvents;
use crate::live::Shared;
use crate::metrics;
use crate::pools::Pool;
use crate::prefix::Source;
use crate::rehash::{Rehash, Seen, Sequence};

/// How often the set of engines to follow is compared with the registry.
const RECONCILE: Duration = Duration::from_secs(1);
/// How long a replay may take before the worker is rebuilt instead.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait before connecting again after a failed first connection.
const RETRY: Duration = Duration::from_secs(1);

/// What one follower is for: a change to any part starts a new one.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    pool: String,
    worker: String,
    events: ZmqEvents,
    block_size: usize,
    max_blocks: usize,
}

/// Keeps one follower running per worker that publishes over ZeroMQ, as
/// the registry changes, until the task is dropped.
pub async fn run(live: Shared) {
    let mut running: HashMap<Key, JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(RECONCILE);
    loop {
        tick.tick().await;
        let state = live.load();
        let max_blocks = state.config.routing.max_blocks_per_worker;
        let wanted: Vec<Key> = state
            .registry
            .pools()
            .iter()
            .flat_map(|pool| {
                pool.workers.iter().filter_map(move |w| {
                    Some(Key {
                        pool: pool.name.clone(),
                        worker: w.id.to_string(),
                        events: w.engine.kv_events.clone()?,
                        block_size: pool.block_size,
                        max_blocks,
                    })
                })
            })
            .collect();
        running.retain(|key, task| {
            let keep = wanted.contains(key) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for key in wanted {
            if let Entry::Vacant(slot) = running.entry(key) {
                let follower = Follower::new(slot.key().clone(), live.clone());
                slot.insert(tokio::spawn(follower.run()));
            }
        }
    }
}

struct Follower {
    key: Key,
    live: Shared,
    rehash: Rehash,
    seq: Sequence,
    /// The foreign block size last warned about, so a log says it once.
    warned_block_size: Option<usize>,
}

impl Follower {
    fn new(key: Key, live: Shared) -> Follower {
        let rehash = Rehash::new(&key.worker, key.block_size, key.max_blocks, rand::random());
        Follower {
            key,
            live,
            rehash,
            seq: Sequence::default(),
            warned_block_size: None,
        }
    }

    async fn run(mut self) {
        let endpoint = self.key.events.endpoint.clone();
        let mut sub = SubSocket::new();
        let mut monitor = sub.monitor();
        if let Err(e) = sub.subscribe("").await {
            return tracing::error!(worker = %self.key.worker, error = %e, "KV events: cannot subscribe");
        }
        // Once connected, the socket reconnects by itself whenever it drops.
        loop {
            match sub.connect(&endpoint).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(worker = %self.key.worker, %endpoint, error = %e, "KV events: cannot connect yet");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        tracing::info!(pool = %self.key.pool, worker = %self.key.worker, %endpoint, "following KV events over ZeroMQ");
        self.catch_up().await;
        loop {
            tokio::select! {
                message = sub.recv() => match message {
                    Ok(message) => self.on_message(message).await,
                    Err(_) => {
                        // No peer right now: what comes after it returns may not follow on.
                        self.seq.forget();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(event) = monitor.next() => {
                    if let SocketEvent::Disconnected(_) = event {
                        self.seq.forget();
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, message: ZmqMessage) {
        let Some((seq, payload)) = sequenced(message.into_vec(), 1) else {
            return tracing::warn!(worker = %self.key.worker, "KV events: a message that is not [topic, sequence, payload]");
        };
        match self.seq.see(seq) {
            Seen::InOrder => self.apply(seq, &payload),
            Seen::Repeated => {}
            Seen::Missed { from } => self.recover(from, false, (seq, payload)).await,
            // From the start: whatever the engine holds was stored before now.
            Seen::Unknown => self.recover(0, true, (seq, payload)).await,
        }
    }

    /// Applies the engine's history from its replay socket, if it has one:
    /// what it stored before this gateway subscribed, which no message to
    /// come may ever mention.
    async fn catch_up(&mut self) {
        let Some(replay) = self.key.events.replay.clone() else {
            return;
        };
        match fetch_replay(&replay, 0).await {
            Ok(history) if !history.is_empty() => {
                self.start_over();
                for (seq, payload) in history {
                    if matches!(self.seq.see(seq), Seen::InOrder | Seen::Unknown) {
                        self.apply(seq, &payload);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(worker = %self.key.worker, %replay, error = %e, "KV events: no history from the replay socket")
            }
        }
    }

    /// Fills the batches from `from` up to `current` from the replay socket,
    /// starting the worker over first when `restart` is asked or when the
    /// replay does not reach back to `from`.
    async fn recover(&mut self, from: u64, restart: bool, current: (u64, Bytes)) {
        let replayed = match &self.key.events.replay {
            Some(replay) if current.0 > from => fetch_replay(replay, from).await.unwrap_or_else(|e| {
                tracing::info!(worker = %self.key.worker, %replay, error = %e, "KV events: replay failed");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        let complete = current.0 == from || replayed.first().is_some_and(|(s, _)| *s == from);
        tracing::debug!(worker = %self.key.worker, from, replayed = replayed.len(), complete, "KV events replayed");
        if restart || !complete {
            if !complete {
                tracing::info!(worker = %self.key.worker, from, "KV events missed; rebuilding the worker's entries");
                metrics::kv_batch(&self.key.pool, "gap");
            }
            self.start_over();
        }
        for (seq, payload) in replayed.into_iter().chain(std::iter::once(current)) {
            match self.seq.see(seq) {
                Seen::Repeated => continue,
                Seen::InOrder | Seen::Unknown => {}
                Seen::Missed { .. } => self.start_over(),
            }
            self.apply(seq, &payload);
        }
    }

    /// Drops what the worker was thought to hold: the next batch applied
    /// starts a new instance, and any sequence number is taken as the next.
    fn start_over(&mut self) {
        self.rehash.restart(rand::random());
        self.seq.forget();
    }

    fn apply(&mut self, seq: u64, payload: &[u8]) {
        let Some(pool) = self.pool() else { return };
        let batch = match engine_kv::decode(payload) {
            Ok(batch) => batch,
            Err(e) => {
                // Its events are lost to us: what it holds is unknown from here.
                tracing::warn!(worker = %self.key.worker, error = %e, "KV events: malformed batch");
                metrics::kv_batch(&pool.name, "malformed");
                self.start_over();
                return;
            }
        };
        let rehashed = self.rehash.rehash(&batch);
        self.seq.applied(seq);
        if let Some(size) = rehashed.mismatched_block_size {
            metrics::block_size_mismatch(&pool.name, &self.key.worker);
            if self.warned_block_size.replace(size) != Some(size) {
                tracing::error!(pool = %pool.name, worker = %self.key.worker, engine_block_size = size,
                    pool_block_size = pool.block_size, "block size mismatch; the engine's blocks are ignored");
            }
        }
        if rehashed.over_cap {
            tracing::warn!(worker = %self.key.worker, max = self.key.max_blocks, "engine holds more blocks than routing.max_blocks_per_worker; forgotten");
        }
        let applied = pool.prefix.apply(&rehashed.batch, Source::Zmq);
        metrics::kv_batch(&pool.name, applied.name());
        if applied.needs_resync() {
            // The index let go of the worker (it turned unhealthy, say):
            // rebuild it from the engine's history on the next message.
            self.start_over();
        }
    }

    fn pool(&self) -> Option<Arc<Pool>> {
        let registry = self.live.load().registry.clone();
        let pool = registry.pools().iter().find(|p| p.name == self.key.pool)?;
        pool.worker(&self.key.worker)?;
        Some(pool.clone())
    }
}

/// The sequence number and payload of `frames`, after `skip` leading
/// frames (a topic, a delimiter). `None` for a malformed message.
fn sequenced(frames: Vec<Bytes>, skip: usize) -> Option<(u64, Bytes)> {
    let [seq, payload]: [Bytes; 2] = frames.get(skip..)?.to_vec().try_into().ok()?;
    let seq = i64::from_be_bytes(seq.as_ref().try_into().ok()?);
    Some((u64::try_from(seq).ok()?, payload))
}

/// The batches from `from` on that the engine's replay socket still holds.
async fn fetch_replay(endpoint: &str, from: u64) -> Result<Vec<(u64, Bytes)>, String> {
    let fetch = async {
        let mut dealer = DealerSocket::new();
        dealer.connect(endpoint).await.map_err(|e| e.to_string())?;
        // A DEALER speaks to the engine's ROUTER as a REQ would: an empty
        // delimiter, then the request.
        let mut request = ZmqMessage::from(Bytes::new());
        request.push_back(Bytes::copy_from_slice(&from.to_be_bytes()));
        dealer.send(request).await.map_err(|e| e.to_string())?;
        let mut batches = Vec::new();
        loop {
            let frames = dealer.recv().await.map_err(|e| e.to_string())?.into_vec();
            if frames
                .get(1)
                .is_some_and(|f| f.as_ref() == REPLAY_END.to_be_bytes())
            {
                return Ok(batches);
            }
            batches.push(sequenced(frames, 1).ok_or("a malformed replay message")?);
        }
    };
    tokio::time::timeout(REPLAY_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no end of replay within {} ms", REPLAY_TIMEOUT.as_millis()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_topic_sequence_payload() {
        let frames = |seq: i64| {
            vec![
                Bytes::from_static(b"kv"),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                Bytes::from_static(b"p"),
            ]
        };
        assert_eq!(sequenced(frames(7), 1), Some((7, Bytes::from_static(b"p"))));
        assert_eq!(sequenced(frames(-1), 1), None);
        assert_eq!(sequenced(frames(7)[..2].to_vec(), 1), None);
    }
}
