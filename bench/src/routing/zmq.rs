//! The `kv_zmq` run: the same sim workers, their KV events reaching the
//! gateway as a vLLM engine's do. For each worker a publisher here takes its
//! events off the in-process bus and sends them in vLLM's wire format over
//! ZeroMQ (PUB, with a ROUTER replay socket), each stored block with its
//! token ids (looked up from the workload's prompts) under an engine hash of
//! its own, so the gateway must rehash them as it does for vLLM. The
//! gateway sees no bus: events come only over ZeroMQ.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use protocol::bus::{Subjects, Topic};
use protocol::engine_kv::{self, EngineBatch, EngineEvent, EngineHash, Stored, REPLAY_END};
use protocol::{BlockHash, Bus, KvEvent, KvEventBatch};
use tokio::task::JoinHandle;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::cluster::POOL;
use super::workload::Request;

/// Batches kept for replay, as vLLM's `buffer_steps` default.
const BUFFER: usize = 10_000;

/// The token ids of every full prompt block of the workload, by hash.
pub type BlockTokens = HashMap<BlockHash, Vec<u32>>;

pub fn block_tokens(requests: &[Request], block_size: usize) -> BlockTokens {
    requests
        .iter()
        .flat_map(|r| {
            r.hashes
                .iter()
                .copied()
                .zip(r.tokens.chunks_exact(block_size).map(<[u32]>::to_vec))
        })
        .collect()
}

/// Where one worker's events are published.
pub struct Endpoints {
    pub events: String,
    pub replay: String,
}

pub struct Publishers {
    pub endpoints: HashMap<String, Endpoints>,
    tasks: Vec<JoinHandle<()>>,
}

impl Publishers {
    /// One publisher per worker id; start before the workers, so each sees
    /// its worker's first event.
    pub async fn start(
        bus: &Bus,
        ids: &[String],
        tokens: Arc<BlockTokens>,
        block_size: usize,
    ) -> anyhow::Result<Publishers> {
        let subjects = Subjects::new(protocol::bus::DEFAULT_SUBJECT_PREFIX);
        let (mut endpoints, mut tasks) = (HashMap::new(), Vec::new());
        for id in ids {
            let mut publisher = PubSocket::new();
            let events = publisher.bind("tcp://127.0.0.1:0").await?.to_string();
            let mut replay = RouterSocket::new();
            let replay_at = replay.bind("tcp://127.0.0.1:0").await?.to_string();
            let mut sub = bus.subscribe(subjects.worker(Topic::Kv, POOL, id)).await?;
            let mut relay = Relay {
                tokens: tokens.clone(),
                block_size,
                seq: 0,
                buffer: VecDeque::new(),
            };
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(message) = sub.next() => {
                            let Ok(batch) = serde_json::from_slice::<KvEventBatch>(&message.payload) else { continue };
                            let (seq, payload) = relay.publish(&batch);
                            let mut frames = ZmqMessage::from(Bytes::from_static(b"kv-events"));
                            frames.push_back(Bytes::copy_from_slice(&seq.to_be_bytes()));
                            frames.push_back(payload);
                            let _ = publisher.send(frames).await;
                        }
                        Ok(request) = replay.recv() => {
                            for answer in relay.replay(request.into_vec()) {
                                let _ = replay.send(answer).await;
                            }
                        }
                    }
                }
            }));
            endpoints.insert(
                id.clone(),
                Endpoints {
                    events,
                    replay: replay_at,
                },
            );
        }
        Ok(Publishers { endpoints, tasks })
    }

    pub fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

struct Relay {
    tokens: Arc<BlockTokens>,
    block_size: usize,
    seq: u64,
    buffer: VecDeque<(u64, Bytes)>,
}

impl Relay {
    /// The batch in vLLM's format, numbered and kept for replay.
    fn publish(&mut self, batch: &KvEventBatch) -> (u64, Bytes) {
        let events = batch.events.iter().flat_map(|e| self.event(e)).collect();
        let payload = Bytes::from(engine_kv::encode(&EngineBatch {
            ts: 0.0,
            events,
            data_parallel_rank: None,
        }));
        let seq = self.seq;
        self.seq += 1;
        if self.buffer.len() == BUFFER {
            self.buffer.pop_front();
        }
        self.buffer.push_back((seq, payload.clone()));
        (seq, payload)
    }

    fn event(&self, event: &KvEvent) -> Option<EngineEvent> {
        vllm_event(event, self.block_size, engine_hash, |h| {
            self.tokens.get(h).cloned()
        })
    }

    /// Answers `[client, "", start]` with every kept batch from `start`, then the end marker.
    fn replay(&self, frames: Vec<Bytes>) -> Vec<ZmqMessage> {
        let [client, _, start]: [Bytes; 3] = match frames.try_into() {
            Ok(frames) => frames,
            Err(_) => return Vec::new(),
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()).map(u64::from_be_bytes) else {
            return Vec::new();
        };
        let frames = |seq: Bytes, payload: Bytes| {
            let mut m = ZmqMessage::from(client.clone());
            m.push_back(Bytes::new());
            m.push_back(seq);
            m.push_back(payload);
            m
        };
        self.buffer
            .iter()
            .filter(|(seq, _)| *seq >= start)
            .map(|(seq, payload)| {
                frames(Bytes::copy_from_slice(&seq.to_be_bytes()), payload.clone())
            })
            .chain(std::iter::once(frames(
                Bytes::copy_from_slice(&REPLAY_END.to_be_bytes()),
                Bytes::new(),
            )))
            .collect()
    }
}

/// Our `event` as vLLM would publish it: blocks named by `engine_hash`, each
/// stored block with its `tokens`. A block without tokens (generated text,
/// in no prompt) cuts the chain there; `None` when no block is left.
pub(crate) fn vllm_event(
    event: &KvEvent,
    block_size: usize,
    engine_hash: impl Fn(&BlockHash) -> EngineHash,
    tokens: impl Fn(&BlockHash) -> Option<Vec<u32>>,
) -> Option<EngineEvent> {
    Some(match event {
        KvEvent::Stored { parent, hashes } => {
            let known: Vec<Vec<u32>> = hashes.iter().map_while(&tokens).collect();
            if known.is_empty() {
                return None;
            }
            EngineEvent::Stored(Stored {
                block_hashes: hashes[..known.len()].iter().map(&engine_hash).collect(),
                parent: parent.as_ref().map(&engine_hash),
                token_ids: known.concat(),
                block_size,
                lora_id: None,
                lora_name: None,
                medium: Some(engine_kv::MEDIUM_GPU.to_string()),
                extra_keys: Vec::new(),
                group_idx: None,
            })
        }
        KvEvent::Removed { hashes } => EngineEvent::Removed {
            block_hashes: hashes.iter().map(&engine_hash).collect(),
            medium: Some(engine_kv::MEDIUM_GPU.to_string()),
            group_idx: None,
        },
        KvEvent::Cleared => EngineEvent::AllCleared,
    })
}

/// The engine's name for a block: anything but ours, so the gateway must rehash.
fn engine_hash(hash: &BlockHash) -> EngineHash {
    EngineHash(hash.0.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15)
}
