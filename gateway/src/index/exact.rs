//! The exact index, fed by the workers' KV events: block hash → the workers
//! holding it, with per-worker event ordering, gap detection and resync.
//!
//! Event ids: the first batch of a worker instance has id 1 and starts with
//! `Cleared`; each later batch has the next id. Instances are only compared
//! for equality (a restarted worker has a different one, not a larger one).
//!
//! Trust: a worker whose events cannot be applied exactly (a missed batch, a
//! first sighting mid-stream, too many blocks) has its blocks dropped at once
//! and counts for nothing until a snapshot resyncs it. Dropping rather than
//! keeping stale blocks means the index may under-count a worker for the
//! length of a snapshot round trip, but never routes to blocks that are gone.

use std::collections::BTreeMap;

use protocol::kv::Instance;
use protocol::{BlockHash, KvEvent, KvEventBatch, KvSnapshot};

use super::hasher::{BlockMap, BlockSet, FoldState};
use super::overlap::{self, Holders, Overlaps};
use super::slots::{Slot, Slots};

/// What became of a batch or a snapshot. After any outcome for which
/// [`Applied::needs_resync`] is true, the caller should ask the worker for a
/// snapshot and hand it to [`PrefixIndex::resync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied in order.
    Ok,
    /// Already applied (a duplicate or an older id, or a snapshot older than
    /// what the index has): ignored.
    Stale,
    /// The first batch of an instance not seen before: whatever the worker
    /// held before is dropped and this batch applied from scratch.
    NewInstance,
    /// Batch `expected` never arrived (1 for an instance first seen mid-stream,
    /// or for a snapshot followed by held batches that do not follow on). The
    /// worker's blocks are dropped; batches are held until a snapshot comes.
    Gap { expected: u64, got: u64 },
    /// The worker is already waiting for a snapshot; the batch is held to be
    /// replayed on top of it.
    Held,
    /// The worker would hold more than `max_blocks_per_worker` blocks; its
    /// blocks are dropped, and it waits for a snapshot that fits.
    OverCap { max_blocks_per_worker: usize },
    /// The snapshot was hashed with another block size than this pool's, so
    /// none of its blocks could ever match a prompt: refused.
    BlockSizeMismatch { expected: usize, got: usize },
}

impl Applied {
    /// A fixed name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Applied::Ok => "ok",
            Applied::Stale => "stale",
            Applied::NewInstance => "new_instance",
            Applied::Gap { .. } => "gap",
            Applied::Held => "held",
            Applied::OverCap { .. } => "over_cap",
            Applied::BlockSizeMismatch { .. } => "block_size_mismatch",
        }
    }

    pub fn needs_resync(&self) -> bool {
        matches!(
            self,
            Applied::Gap { .. } | Applied::OverCap { .. } | Applied::BlockSizeMismatch { .. }
        )
    }
}

/// Sizes for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    pub workers: usize,
    /// Distinct block hashes held by any worker.
    pub blocks: usize,
    /// (block, worker) pairs: what memory grows with.
    pub entries: usize,
    pub awaiting_resync: usize,
}

/// The exact prefix index of one pool.
pub struct PrefixIndex {
    block_size: usize,
    max_blocks_per_worker: usize,
    holders: BlockMap<Holders>,
    workers: Slots<Worker>,
    hash_state: FoldState,
}

struct Worker {
    instance: Option<Instance>,
    /// The last batch applied (or the snapshot's `last_id`).
    last_id: u64,
    /// Every block this worker holds, so dropping them all is O(its blocks).
    blocks: BlockSet,
    /// Batches received while waiting for a snapshot; `None` while in sync.
    held: Option<Held>,
}

/// Batches kept for replay on top of a snapshot, by id.
#[derive(Default)]
struct Held {
    batches: BTreeMap<u64, KvEventBatch>,
    /// Hashes in `batches`, bounded like a worker's blocks.
    hashes: usize,
}

impl PrefixIndex {
    /// An index for a pool whose workers hash `block_size`-token blocks; a
    /// worker is cut off beyond `max_blocks_per_worker` (set it above the
    /// largest real KV cache, say twice it, so only a misbehaving worker hits it).
    pub fn new(block_size: usize, max_blocks_per_worker: usize) -> PrefixIndex {
        let hash_state = FoldState::new();
        PrefixIndex {
            block_size,
            max_blocks_per_worker,
            holders: BlockMap::with_hasher(hash_state),
            workers: Slots::new(),
            hash_state,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks `worker_id`'s events say it holds.
    pub fn held_blocks(&self, worker_id: &str) -> usize {
        self.workers
            .get(worker_id)
            .map_or(0, |slot| self.workers.state(slot).blocks.len())
    }

    /// Applies one batch of a worker's events, in id order.
    pub fn apply(&mut self, batch: &KvEventBatch) -> Applied {
        let slot = self.slot(&batch.worker_id);
        let worker = self.workers.state(slot);
        let (last_id, holding) = (worker.last_id, worker.held.is_some());
        if worker.instance != Some(batch.instance) {
            self.drop_blocks(slot);
            let worker = self.workers.state_mut(slot);
            worker.instance = Some(batch.instance);
            worker.last_id = 0;
            worker.held = None;
            if batch.id != 1 {
                return self.lose_track(slot, batch, 1);
            }
            return match self.apply_events(slot, batch) {
                Applied::Ok => Applied::NewInstance,
                other => other,
            };
        }
        if holding {
            self.hold(slot, batch.clone());
            return Applied::Held;
        }
        match batch.id {
            id if id <= last_id => Applied::Stale,
            id if id == last_id + 1 => self.apply_events(slot, batch),
            _ => self.lose_track(slot, batch, last_id + 1),
        }
    }

    /// Replaces a worker's blocks with a snapshot's, then replays the batches
    /// held since its gap that come after the snapshot. A snapshot of the
    /// instance the index follows that is older than what was applied is
    /// `Stale`; a snapshot of another instance is taken as the truth (the
    /// instance's next batch will tell if it was a late one).
    pub fn resync(&mut self, snapshot: &KvSnapshot) -> Applied {
        if snapshot.block_size != self.block_size {
            return Applied::BlockSizeMismatch {
                expected: self.block_size,
                got: snapshot.block_size,
            };
        }
        let slot = self.slot(&snapshot.worker_id);
        let worker = self.workers.state(slot);
        let same_instance = worker.instance == Some(snapshot.instance);
        if same_instance && worker.held.is_none() && snapshot.last_id < worker.last_id {
            return Applied::Stale;
        }
        self.drop_blocks(slot);
        let worker = self.workers.state_mut(slot);
        let mut held = match worker.held.take() {
            Some(held) if same_instance => held.batches,
            _ => BTreeMap::new(),
        };
        worker.instance = Some(snapshot.instance);
        worker.last_id = snapshot.last_id;
        let mut after = held.split_off(&(snapshot.last_id + 1));
        if snapshot.blocks.len() > self.max_blocks_per_worker {
            self.hold_all(slot, after);
            return Applied::OverCap {
                max_blocks_per_worker: self.max_blocks_per_worker,
            };
        }
        for &hash in &snapshot.blocks {
            self.store(slot, hash);
        }
        while let Some((id, batch)) = after.pop_first() {
            let expected = self.workers.state(slot).last_id + 1;
            let applied = if id == expected {
                self.apply_events(slot, &batch)
            } else {
                self.lose_track(slot, &batch, expected)
            };
            if applied != Applied::Ok {
                self.hold_all(slot, after);
                return applied;
            }
        }
        Applied::Ok
    }

    /// Forgets a worker entirely: called when it leaves the pool.
    pub fn remove_worker(&mut self, worker_id: &str) {
        if let Some(slot) = self.workers.get(worker_id) {
            self.drop_blocks(slot);
            self.workers.remove(worker_id);
        }
    }

    /// Workers waiting for a snapshot, so the caller can ask again if one was lost.
    pub fn awaiting_resync(&self) -> impl Iterator<Item = &str> {
        self.workers
            .iter()
            .filter(|(_, w)| w.held.is_some())
            .map(|(id, _)| &**id)
    }

    /// How many leading blocks of `hashes` each worker holds.
    pub fn overlaps(&self, hashes: &[BlockHash]) -> Overlaps {
        overlap::leading(
            hashes,
            self.workers.words(),
            |slot| self.workers.id(slot).clone(),
            |hash, active| match self.holders.get(&hash) {
                Some(holders) => holders.narrow(active),
                None => active.fill(0),
            },
        )
    }

    /// Distinct blocks held by any worker.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    pub fn stats(&self) -> IndexStats {
        let (mut entries, mut awaiting_resync) = (0, 0);
        for (_, worker) in self.workers.iter() {
            entries += worker.blocks.len();
            awaiting_resync += usize::from(worker.held.is_some());
        }
        IndexStats {
            workers: self.workers.len(),
            blocks: self.holders.len(),
            entries,
            awaiting_resync,
        }
    }

    /// The worker's slot, adding it on first sight.
    fn slot(&mut self, worker_id: &str) -> Slot {
        let hash_state = self.hash_state;
        self.workers.get_or_insert_with(worker_id, || Worker {
            instance: None,
            last_id: 0,
            blocks: BlockSet::with_hasher(hash_state),
            held: None,
        })
    }

    fn apply_events(&mut self, slot: Slot, batch: &KvEventBatch) -> Applied {
        for event in &batch.events {
            match event {
                // The parent is not needed: a chained hash already names its whole prefix.
                KvEvent::Stored { hashes, .. } => {
                    for &hash in hashes {
                        self.store(slot, hash);
                    }
                    if self.workers.state(slot).blocks.len() > self.max_blocks_per_worker {
                        self.drop_blocks(slot);
                        let worker = self.workers.state_mut(slot);
                        worker.last_id = batch.id;
                        worker.held = Some(Held::default());
                        return Applied::OverCap {
                            max_blocks_per_worker: self.max_blocks_per_worker,
                        };
                    }
                }
                KvEvent::Removed { hashes } => {
                    for hash in hashes {
                        self.unstore(slot, hash);
                    }
                }
                KvEvent::Cleared => self.drop_blocks(slot),
            }
        }
        self.workers.state_mut(slot).last_id = batch.id;
        Applied::Ok
    }

    fn store(&mut self, slot: Slot, hash: BlockHash) {
        if self.workers.state_mut(slot).blocks.insert(hash) {
            self.holders
                .entry(hash)
                .or_insert(Holders::Inline(0))
                .insert(slot);
        }
    }

    fn unstore(&mut self, slot: Slot, hash: &BlockHash) {
        if self.workers.state_mut(slot).blocks.remove(hash) {
            self.release(slot, hash);
        }
    }

    /// Takes `slot` off the holders of `hash`, and the entry away once nobody holds it.
    fn release(&mut self, slot: Slot, hash: &BlockHash) {
        if let Some(holders) = self.holders.get_mut(hash) {
            if holders.remove(slot) {
                self.holders.remove(hash);
            }
        }
    }

    fn drop_blocks(&mut self, slot: Slot) {
        let blocks = std::mem::replace(
            &mut self.workers.state_mut(slot).blocks,
            BlockSet::with_hasher(self.hash_state),
        );
        for hash in &blocks {
            self.release(slot, hash);
        }
    }

    /// A batch cannot be applied in order: drop the worker's blocks and hold
    /// the batch (and those after it) until a snapshot comes.
    fn lose_track(&mut self, slot: Slot, batch: &KvEventBatch, expected: u64) -> Applied {
        self.drop_blocks(slot);
        self.workers.state_mut(slot).held = Some(Held::default());
        self.hold(slot, batch.clone());
        Applied::Gap {
            expected,
            got: batch.id,
        }
    }

    fn hold_all(&mut self, slot: Slot, batches: BTreeMap<u64, KvEventBatch>) {
        self.workers
            .state_mut(slot)
            .held
            .get_or_insert_with(Held::default);
        for (_, batch) in batches {
            self.hold(slot, batch);
        }
    }

    /// Keeps a batch for replay after the snapshot. Held hashes are bounded by
    /// the same cap as blocks, dropping the oldest batches first (a replay
    /// that needed them then reports a gap).
    fn hold(&mut self, slot: Slot, batch: KvEventBatch) {
        let cap = self.max_blocks_per_worker;
        let Some(held) = &mut self.workers.state_mut(slot).held else {
            return;
        };
        held.hashes += hashes_in(&batch);
        if let Some(replaced) = held.batches.insert(batch.id, batch) {
            held.hashes -= hashes_in(&replaced);
        }
        while held.hashes > cap {
            let Some((_, oldest)) = held.batches.pop_first() else {
                break;
            };
            held.hashes -= hashes_in(&oldest);
        }
    }
}

fn hashes_in(batch: &KvEventBatch) -> usize {
    batch
        .events
        .iter()
        .map(|e| match e {
            KvEvent::Stored { hashes, .. } | KvEvent::Removed { hashes } => hashes.len(),
            KvEvent::Cleared => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> BlockHash {
        BlockHash(n)
    }

    fn stored(hashes: &[u64]) -> KvEvent {
        KvEvent::Stored {
            parent: None,
            hashes: hashes.iter().copied().map(h).collect(),
        }
    }

    fn removed(hashes: &[u64]) -> KvEvent {
        KvEvent::Removed {
            hashes: hashes.iter().copied().map(h).collect(),
        }
    }

    fn batch(worker: &str, instance: Instance, id: u64, events: Vec<KvEvent>) -> KvEventBatch {
        KvEventBatch {
            worker_id: worker.into(),
            instance,
            id,
            events,
        }
    }

    fn snapshot(worker: &str, instance: Instance, last_id: u64, blocks: &[u64]) -> KvSnapshot {
        KvSnapshot {
            worker_id: worker.into(),
            instance,
            last_id,
            block_size: 16,
            blocks: blocks.iter().copied().map(h).collect(),
        }
    }

    fn prompt(n: u64) -> Vec<BlockHash> {
        (0..n).map(h).collect()
    }

    /// An index where worker "a" (instance 7) has applied batch 1 storing `blocks`.
    fn with_a(blocks: &[u64]) -> PrefixIndex {
        let mut index = PrefixIndex::new(16, 100);
        let first = batch("a", 7, 1, vec![KvEvent::Cleared, stored(blocks)]);
        assert_eq!(index.apply(&first), Applied::NewInstance);
        index
    }

    #[test]
    fn overlap_counts_leading_blocks_only() {
        let mut index = with_a(&[0, 1, 3]);
        index.apply(&batch("b", 1, 1, vec![stored(&[0, 1, 2, 3])]));
        index.apply(&batch("c", 1, 1, vec![stored(&[1, 2])]));
        let found = index.overlaps(&prompt(4));
        assert_eq!(found.blocks("a"), 2);
        assert_eq!(found.blocks("b"), 4);
        assert_eq!(found.blocks("c"), 0);
        assert_eq!(found.len(), 2);
        let held = ["a", "b", "c", "none"].map(|w| index.held_blocks(w));
        assert_eq!(held, [3, 4, 2, 0]);
        assert!(index.overlaps(&[h(99)]).is_empty());
        assert!(index.overlaps(&[]).is_empty());
    }

    #[test]
    fn stored_removed_and_cleared_apply_in_order() {
        let mut index = with_a(&[0, 1, 2]);
        assert_eq!(
            index.apply(&batch("a", 7, 2, vec![removed(&[1])])),
            Applied::Ok
        );
        assert_eq!(index.overlaps(&prompt(3)).blocks("a"), 1);
        assert_eq!(index.len(), 2);
        let restore = batch("a", 7, 3, vec![stored(&[1]), removed(&[9])]);
        assert_eq!(index.apply(&restore), Applied::Ok);
        assert_eq!(index.overlaps(&prompt(3)).blocks("a"), 3);
        let clear = batch("a", 7, 4, vec![KvEvent::Cleared, stored(&[5])]);
        assert_eq!(index.apply(&clear), Applied::Ok);
        assert_eq!(index.overlaps(&prompt(3)).blocks("a"), 0);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn stale_and_duplicate_batches_are_ignored() {
        let mut index = with_a(&[0]);
        assert_eq!(
            index.apply(&batch("a", 7, 2, vec![stored(&[1])])),
            Applied::Ok
        );
        assert_eq!(
            index.apply(&batch("a", 7, 2, vec![removed(&[1])])),
            Applied::Stale
        );
        assert_eq!(
            index.apply(&batch("a", 7, 1, vec![KvEvent::Cleared])),
            Applied::Stale
        );
        assert_eq!(index.overlaps(&prompt(2)).blocks("a"), 2);
    }

    #[test]
    fn a_gap_drops_the_worker_until_a_snapshot_and_replays_held_batches() {
        let mut index = with_a(&[0, 1]);
        let gap = index.apply(&batch("a", 7, 3, vec![stored(&[2])]));
        assert_eq!(
            gap,
            Applied::Gap {
                expected: 2,
                got: 3
            }
        );
        assert!(gap.needs_resync());
        assert!(index.overlaps(&prompt(3)).is_empty());
        assert_eq!(index.awaiting_resync().collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            index.apply(&batch("a", 7, 4, vec![stored(&[3])])),
            Applied::Held
        );
        assert_eq!(index.stats().entries, 0);
        // The snapshot already includes batch 3; batch 4 is replayed on top.
        assert_eq!(index.resync(&snapshot("a", 7, 3, &[0, 1, 2])), Applied::Ok);
        assert_eq!(index.overlaps(&prompt(5)).blocks("a"), 4);
        assert_eq!(index.awaiting_resync().count(), 0);
        assert_eq!(index.apply(&batch("a", 7, 4, vec![])), Applied::Stale);
        assert_eq!(
            index.apply(&batch("a", 7, 5, vec![stored(&[4])])),
            Applied::Ok
        );
        assert_eq!(index.overlaps(&prompt(5)).blocks("a"), 5);
    }

    #[test]
    fn a_replay_with_a_hole_is_another_gap() {
        let mut index = with_a(&[0]);
        index.apply(&batch("a", 7, 3, vec![stored(&[2])]));
        index.apply(&batch("a", 7, 5, vec![stored(&[4])]));
        let replay = index.resync(&snapshot("a", 7, 3, &[0, 1, 2]));
        assert_eq!(
            replay,
            Applied::Gap {
                expected: 4,
                got: 5
            }
        );
        assert!(index.overlaps(&prompt(3)).is_empty());
        assert_eq!(
            index.resync(&snapshot("a", 7, 5, &[0, 1, 2, 3, 4])),
            Applied::Ok
        );
        assert_eq!(index.overlaps(&prompt(5)).blocks("a"), 5);
    }

    #[test]
    fn resync_replaces_blocks_and_later_ids_up_to_it_are_stale() {
        let mut index = with_a(&[0, 1, 2]);
        assert_eq!(index.resync(&snapshot("a", 7, 10, &[0, 5])), Applied::Ok);
        assert_eq!(index.overlaps(&prompt(3)).blocks("a"), 1);
        assert_eq!(index.len(), 2);
        assert_eq!(
            index.apply(&batch("a", 7, 10, vec![stored(&[1])])),
            Applied::Stale
        );
        assert_eq!(
            index.apply(&batch("a", 7, 11, vec![stored(&[1])])),
            Applied::Ok
        );
        assert_eq!(index.resync(&snapshot("a", 7, 9, &[])), Applied::Stale);
        let mut wrong = snapshot("a", 7, 12, &[]);
        wrong.block_size = 32;
        let refused = index.resync(&wrong);
        assert_eq!(
            refused,
            Applied::BlockSizeMismatch {
                expected: 16,
                got: 32
            }
        );
        assert_eq!(index.overlaps(&prompt(3)).blocks("a"), 2);
    }

    #[test]
    fn a_new_instance_starts_from_scratch() {
        let mut index = with_a(&[0, 1, 2]);
        let restart = batch("a", 8, 1, vec![KvEvent::Cleared, stored(&[0])]);
        assert_eq!(index.apply(&restart), Applied::NewInstance);
        assert_eq!(index.overlaps(&prompt(3)).blocks("a"), 1);
        assert_eq!(index.len(), 1);
        // A worker first seen mid-stream needs a snapshot before it counts.
        let midway = index.apply(&batch("b", 1, 40, vec![stored(&[0])]));
        assert_eq!(
            midway,
            Applied::Gap {
                expected: 1,
                got: 40
            }
        );
        assert_eq!(index.overlaps(&prompt(3)).blocks("b"), 0);
        assert_eq!(index.resync(&snapshot("b", 1, 40, &[0, 1])), Applied::Ok);
        assert_eq!(index.overlaps(&prompt(3)).blocks("b"), 2);
    }

    #[test]
    fn remove_worker_purges_its_blocks() {
        let mut index = with_a(&[0, 1]);
        index.apply(&batch("b", 1, 1, vec![stored(&[0, 7])]));
        index.remove_worker("a");
        index.remove_worker("nobody");
        assert_eq!(index.overlaps(&prompt(2)).blocks("a"), 0);
        let stats = index.stats();
        assert_eq!((stats.workers, stats.blocks, stats.entries), (1, 2, 2));
        // Its slot is reused without inheriting anything.
        index.apply(&batch("c", 1, 1, vec![stored(&[7])]));
        assert_eq!(index.overlaps(&prompt(2)).blocks("c"), 0);
        assert_eq!(index.overlaps(&prompt(2)).blocks("b"), 1);
    }

    #[test]
    fn a_worker_over_the_cap_is_dropped_until_a_snapshot_fits() {
        let mut index = PrefixIndex::new(16, 3);
        index.apply(&batch("a", 1, 1, vec![stored(&[0, 1, 2])]));
        let over = index.apply(&batch("a", 1, 2, vec![stored(&[3])]));
        assert_eq!(
            over,
            Applied::OverCap {
                max_blocks_per_worker: 3
            }
        );
        assert!(over.needs_resync());
        assert!(index.is_empty());
        assert_eq!(index.stats().awaiting_resync, 1);
        let too_big = index.resync(&snapshot("a", 1, 2, &[0, 1, 2, 3]));
        assert!(matches!(too_big, Applied::OverCap { .. }));
        assert_eq!(index.resync(&snapshot("a", 1, 2, &[0, 1])), Applied::Ok);
        assert_eq!(index.overlaps(&prompt(3)).blocks("a"), 2);
    }

    #[test]
    fn more_than_64_workers_spill_to_wider_bitsets() {
        let mut index = PrefixIndex::new(16, 100);
        for w in 0..130u64 {
            let blocks: Vec<u64> = (0..w % 5).collect();
            index.apply(&batch(&format!("w{w}"), 1, 1, vec![stored(&blocks)]));
        }
        let found = index.overlaps(&prompt(5));
        for w in 0..130u64 {
            assert_eq!(found.blocks(&format!("w{w}")), (w % 5) as u32);
        }
        for w in 0..130u64 {
            index.remove_worker(&format!("w{w}"));
        }
        assert!(index.is_empty());
    }
}
