//! An engine's KV events (vLLM's, SGLang's) become this gateway's own: each
//! stored block is hashed again from its token ids with the gateway's
//! chained hash, so the engine's hash function and seed never matter; the
//! engine's hashes are mapped to ours for its removals; and each engine
//! batch becomes one [`KvEventBatch`] that the exact index applies as it
//! does our workers'. Also the engine's sequence numbers, to tell a missed
//! batch from a repeated one. Pure.

use std::collections::HashMap;

use protocol::blocks::salted_block_hash;
use protocol::engine_kv::{
    extra_key_salt, is_primary, EngineBatch, EngineEvent, EngineHash, Stored,
};
use protocol::kv::Instance;
use protocol::{BlockHash, KvEvent, KvEventBatch};
use xxhash_rust::xxh3::xxh3_64;

/// One engine's events, rehashed.
pub struct Rehash {
    worker_id: String,
    block_size: usize,
    max_blocks: usize,
    instance: Instance,
    /// The id the next batch gets; 1 starts an instance, with a `Cleared`.
    next_id: u64,
    /// Engine hash → ours, for every block the engine holds that we hashed.
    ours: HashMap<EngineHash, BlockHash>,
}

/// A batch rehashed, and what in it could not be taken.
#[derive(Debug)]
pub struct Rehashed {
    pub batch: KvEventBatch,
    /// The block size of stored blocks refused for not being the pool's.
    pub mismatched_block_size: Option<usize>,
    /// Blocks whose parent we never hashed (stored before we followed the
    /// engine, or refused): no prompt could be matched against them.
    pub orphans: usize,
    /// The engine held more blocks than `max_blocks`: all were dropped.
    pub over_cap: bool,
}

impl Rehash {
    pub fn new(
        worker_id: &str,
        block_size: usize,
        max_blocks: usize,
        instance: Instance,
    ) -> Rehash {
        Rehash {
            worker_id: worker_id.to_string(),
            block_size,
            max_blocks,
            instance,
            next_id: 1,
            ours: HashMap::new(),
        }
    }

    /// Starts over as `instance`: whatever the engine was thought to hold
    /// is dropped when the next batch is applied (it begins by clearing).
    pub fn restart(&mut self, instance: Instance) {
        self.instance = instance;
        self.next_id = 1;
        self.ours.clear();
    }

    pub fn rehash(&mut self, batch: &EngineBatch) -> Rehashed {
        let mut out = Rehashed {
            batch: KvEventBatch {
                worker_id: self.worker_id.clone(),
                instance: self.instance,
                id: self.next_id,
                events: Vec::new(),
            },
            mismatched_block_size: None,
            orphans: 0,
            over_cap: false,
        };
        if self.next_id == 1 {
            out.batch.events.push(KvEvent::Cleared);
        }
        self.next_id += 1;
        for event in &batch.events {
            match event {
                EngineEvent::Stored(stored) => self.stored(stored, &mut out),
                EngineEvent::Removed {
                    block_hashes,
                    medium,
                    group_idx,
                } if is_primary(medium.as_deref(), *group_idx) => {
                    let hashes: Vec<BlockHash> = block_hashes
                        .iter()
                        .filter_map(|h| self.ours.remove(h))
                        .collect();
                    if !hashes.is_empty() {
                        out.batch.events.push(KvEvent::Removed { hashes });
                    }
                }
                EngineEvent::Removed { .. } => {}
                EngineEvent::AllCleared => {
                    self.ours.clear();
                    out.batch.events.push(KvEvent::Cleared);
                }
            }
        }
        if self.ours.len() > self.max_blocks {
            // A misbehaving engine: forget it rather than grow without bound.
            self.ours.clear();
            out.batch.events = vec![KvEvent::Cleared];
            out.over_cap = true;
        }
        out
    }

    fn stored(&mut self, stored: &Stored, out: &mut Rehashed) {
        if !stored.is_primary() {
            return;
        }
        if stored.block_size != self.block_size {
            out.mismatched_block_size = Some(stored.block_size);
            return;
        }
        let blocks = stored.block_hashes.len();
        if blocks == 0 || stored.token_ids.len() != blocks * self.block_size {
            out.orphans += blocks;
            return;
        }
        let parent = match stored.parent {
            None => None,
            Some(engine) => match self.ours.get(&engine) {
                Some(&ours) => Some(ours),
                None => {
                    out.orphans += blocks;
                    return;
                }
            },
        };
        let adapter = lora_salt(stored);
        let mut hashes = Vec::with_capacity(blocks);
        let mut last = parent;
        for (i, (engine, tokens)) in stored
            .block_hashes
            .iter()
            .zip(stored.token_ids.chunks_exact(self.block_size))
            .enumerate()
        {
            let extra = stored.extra_keys.get(i).and_then(Option::as_deref);
            let salt = adapter ^ extra.map_or(0, extra_key_salt);
            let hash = salted_block_hash(last, tokens, salt);
            self.ours.insert(*engine, hash);
            hashes.push(hash);
            last = Some(hash);
        }
        out.batch.events.push(KvEvent::Stored { parent, hashes });
    }
}

/// Blocks computed under a LoRA adapter hold other values than the base
/// model's for the same tokens: salted by the adapter, they stay apart.
fn lora_salt(stored: &Stored) -> u64 {
    match (&stored.lora_name, stored.lora_id) {
        (Some(name), _) => xxh3_64(format!("lora:{name}").as_bytes()),
        (None, Some(id)) => xxh3_64(format!("lora#{id}").as_bytes()),
        (None, None) => 0,
    }
}

/// An engine's sequence numbers as they arrive.
#[derive(Debug, Default)]
pub struct Sequence {
    next: Option<u64>,
}

/// What an arriving sequence number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next one: apply it.
    InOrder,
    /// Applied already (it came again after a replay): skip it.
    Repeated,
    /// Batches from `from` on were missed: replay them, or start over.
    Missed { from: u64 },
    /// Nothing was seen since following began, or since the connection
    /// dropped: the engine may have restarted; its history from 0 is wanted.
    Unknown,
}

impl Sequence {
    pub fn see(&self, seq: u64) -> Seen {
        match self.next {
            None => Seen::Unknown,
            Some(next) if seq == next => Seen::InOrder,
            Some(next) if seq < next => Seen::Repeated,
            Some(next) => Seen::Missed { from: next },
        }
    }

    /// `seq` was applied.
    pub fn applied(&mut self, seq: u64) {
        self.next = Some(seq + 1);
    }

    /// The connection dropped: what comes next cannot be trusted to follow on.
    pub fn forget(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::blocks::block_hashes;

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: &[u32]) -> EngineEvent {
        EngineEvent::Stored(Stored {
            block_hashes: hashes.iter().map(|&h| EngineHash(h)).collect(),
            parent: parent.map(EngineHash),
            token_ids: tokens.to_vec(),
            block_size: 2,
            lora_id: None,
            lora_name: None,
            medium: None,
            extra_keys: Vec::new(),
            group_idx: None,
        })
    }

    fn batch(events: Vec<EngineEvent>) -> EngineBatch {
        EngineBatch {
            ts: 0.0,
            events,
            data_parallel_rank: None,
        }
    }

    #[test]
    fn stored_blocks_get_the_hashes_a_prompt_of_theirs_gets() {
        let mut r = Rehash::new("w", 2, 100, 7);
        let first = r.rehash(&batch(vec![stored(&[10, 11], None, &[1, 2, 3, 4])]));
        let second = r.rehash(&batch(vec![stored(&[12], Some(11), &[5, 6])]));
        let prompt = block_hashes(&[1, 2, 3, 4, 5, 6, 7], 2);
        assert_eq!(
            first.batch.events,
            [
                KvEvent::Cleared,
                KvEvent::Stored {
                    parent: None,
                    hashes: prompt[..2].to_vec()
                }
            ]
        );
        assert_eq!((first.batch.id, second.batch.id), (1, 2));
        assert_eq!(
            second.batch.events,
            [KvEvent::Stored {
                parent: Some(prompt[1]),
                hashes: vec![prompt[2]]
            }]
        );
        let removed = r.rehash(&batch(vec![EngineEvent::Removed {
            block_hashes: vec![EngineHash(12), EngineHash(99)],
            medium: Some("GPU".into()),
            group_idx: None,
        }]));
        assert_eq!(
            removed.batch.events,
            [KvEvent::Removed {
                hashes: vec![prompt[2]]
            }]
        );
    }

    #[test]
    fn adapters_and_extra_keys_are_kept_apart() {
        let mut r = Rehash::new("w", 2, 100, 1);
        let EngineEvent::Stored(mut lora) = stored(&[1], None, &[1, 2]) else {
            unreachable!()
        };
        lora.lora_name = Some("sql".into());
        let mut salted = lora.clone();
        salted.lora_name = None;
        salted.block_hashes = vec![EngineHash(2)];
        salted.extra_keys = vec![Some("(\"tenant-a\",)".into())];
        let out = r.rehash(&batch(vec![
            EngineEvent::Stored(lora),
            EngineEvent::Stored(salted),
            stored(&[3], None, &[1, 2]),
        ]));
        let hashes: Vec<BlockHash> = out
            .batch
            .events
            .iter()
            .filter_map(|e| match e {
                KvEvent::Stored { hashes, .. } => Some(hashes[0]),
                _ => None,
            })
            .collect();
        let base = block_hashes(&[1, 2], 2)[0];
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes[2], base);
        assert!(hashes[0] != base && hashes[1] != base && hashes[0] != hashes[1]);
    }

    #[test]
    fn refused_orphaned_and_other_tier_blocks_are_not_indexed() {
        let mut r = Rehash::new("w", 2, 100, 1);
        let EngineEvent::Stored(mut big) = stored(&[1], None, &[1, 2, 3, 4]) else {
            unreachable!()
        };
        big.block_size = 4;
        let EngineEvent::Stored(mut cpu) = stored(&[2], None, &[1, 2]) else {
            unreachable!()
        };
        cpu.medium = Some("CPU".into());
        let out = r.rehash(&batch(vec![
            EngineEvent::Stored(big),
            EngineEvent::Stored(cpu),
            // Child of the refused block: its parent was never hashed.
            stored(&[3], Some(1), &[5, 6]),
        ]));
        assert_eq!(out.mismatched_block_size, Some(4));
        assert_eq!(out.orphans, 1);
        assert_eq!(out.batch.events, [KvEvent::Cleared]);
    }

    #[test]
    fn an_engine_over_the_cap_is_forgotten() {
        let mut r = Rehash::new("w", 2, 2, 1);
        let out = r.rehash(&batch(vec![stored(&[1, 2, 3], None, &[1, 2, 3, 4, 5, 6])]));
        assert!(out.over_cap);
        assert_eq!(out.batch.events, [KvEvent::Cleared]);
        let next = r.rehash(&batch(vec![stored(&[4], Some(3), &[7, 8])]));
        assert_eq!(next.orphans, 1);
    }

    #[test]
    fn a_restart_clears_first_and_counts_from_one() {
        let mut r = Rehash::new("w", 2, 100, 1);
        r.rehash(&batch(vec![]));
        r.restart(2);
        let out = r.rehash(&batch(vec![stored(&[1], Some(0), &[1, 2])]));
        assert_eq!((out.batch.instance, out.batch.id), (2, 1));
        assert_eq!(out.batch.events, [KvEvent::Cleared]);
    }

    #[test]
    fn sequences_tell_missed_from_repeated() {
        let mut s = Sequence::default();
        assert_eq!(s.see(5), Seen::Unknown);
        s.applied(5);
        assert_eq!(s.see(6), Seen::InOrder);
        assert_eq!(s.see(4), Seen::Repeated);
        assert_eq!(s.see(9), Seen::Missed { from: 6 });
        s.forget();
        assert_eq!(s.see(0), Seen::Unknown);
    }
}
