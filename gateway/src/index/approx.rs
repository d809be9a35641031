//! The approximate index, for engines that publish no KV events: the gateway
//! records where it sent each prompt and assumes that worker keeps the
//! prompt's blocks cached for a while (`ttl`), within a bound on entries.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::BlockHash;

use super::hasher::{BlockMap, FoldState};
use super::overlap::{self, Holders, Overlaps};
use super::slots::{Slot, Slots};

/// The approximate prefix index of one pool.
pub struct ApproxIndex {
    ttl: Duration,
    max_entries: usize,
    blocks: BlockMap<Holding>,
    /// Each worker's live entries: the blocks it is believed to hold.
    workers: Slots<usize>,
    /// One record per (block, worker) recording, oldest first: eviction and
    /// expiry pop from the front. Re-recording an entry leaves its older
    /// record behind, recognised by a sequence number that no longer matches
    /// and skipped when reached; `compact` bounds how many pile up.
    records: VecDeque<Record>,
    /// Live (block, worker) entries: what `max_entries` bounds.
    entries: usize,
    next_seq: u64,
    /// The latest time seen: time never runs backwards here, so `records` stays in time order.
    latest: Option<Instant>,
}

/// The workers recorded for one block.
struct Holding {
    /// The workers of `entries` as a bitset. While `oldest` shows that none
    /// has expired, a lookup ANDs it whole as the exact index does; filtering
    /// `entries` by time on every lookup measured 27 µs instead of 9 µs per
    /// 4k-token lookup over 64 workers, whose shared system prompt blocks
    /// have every worker as a holder.
    holders: Holders,
    oldest: Instant,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: Slot,
    seq: u64,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    hash: BlockHash,
    slot: Slot,
    seq: u64,
}

/// Sizes for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApproxStats {
    pub workers: usize,
    /// Distinct block hashes recorded for any worker.
    pub blocks: usize,
    /// Live (block, worker) entries, at most `max_entries`.
    pub entries: usize,
}

impl ApproxIndex {
    /// Entries count for `ttl` after they were last recorded; beyond
    /// `max_entries` (block, worker) entries the oldest go first.
    pub fn new(ttl: Duration, max_entries: usize) -> ApproxIndex {
        ApproxIndex {
            ttl,
            max_entries,
            blocks: BlockMap::with_hasher(FoldState::new()),
            workers: Slots::new(),
            records: VecDeque::new(),
            entries: 0,
            next_seq: 0,
            latest: None,
        }
    }

    /// Records that the prompt with these block hashes was sent to `worker_id` at `now`.
    pub fn record(&mut self, worker_id: &str, hashes: &[BlockHash], now: Instant) {
        let now = self.latest.map_or(now, |latest| latest.max(now));
        self.latest = Some(now);
        self.expire(now);
        let slot = self.workers.get_or_insert_with(worker_id, || 0);
        for &hash in hashes {
            let seq = self.next_seq;
            self.next_seq += 1;
            let entry = Entry { slot, seq, at: now };
            let holding = self.blocks.entry(hash).or_insert_with(|| Holding {
                holders: Holders::Inline(0),
                oldest: now,
                entries: Vec::new(),
            });
            if holding.upsert(entry) {
                self.entries += 1;
                *self.workers.state_mut(slot) += 1;
            }
            self.records.push_back(Record { hash, slot, seq });
        }
        while self.entries > self.max_entries {
            self.pop_oldest();
        }
        self.compact();
    }

    /// How many leading blocks of `hashes` each worker was sent within `ttl` of `now`.
    pub fn overlaps(&self, hashes: &[BlockHash], now: Instant) -> Overlaps {
        let words = self.workers.words();
        // Only for a block with expired holders; most lookups meet none.
        let mut live = Vec::new();
        overlap::leading(
            hashes,
            words,
            |slot| self.workers.id(slot).clone(),
            |hash, active| match self.blocks.get(&hash) {
                None => active.fill(0),
                Some(holding) if self.alive(holding.oldest, now) => holding.holders.narrow(active),
                Some(holding) => {
                    live.clear();
                    live.resize(words, 0u64);
                    for entry in holding.entries.iter().filter(|e| self.alive(e.at, now)) {
                        live[entry.slot.index() / 64] |= 1 << (entry.slot.0 % 64);
                    }
                    for (a, l) in active.iter_mut().zip(&live) {
                        *a &= l;
                    }
                }
            },
        )
    }

    /// Forgets a worker: called when it leaves the pool. O(all records), as
    /// nothing else lists a worker's entries; workers leave rarely.
    pub fn remove_worker(&mut self, worker_id: &str) {
        let Some((slot, _)) = self.workers.remove(worker_id) else {
            return;
        };
        for record in self.records.iter().filter(|r| r.slot == slot) {
            if let Some(holding) = self.blocks.get_mut(&record.hash) {
                if holding.remove(slot) {
                    self.entries -= 1;
                }
                if holding.entries.is_empty() {
                    self.blocks.remove(&record.hash);
                }
            }
        }
        self.records.retain(|r| r.slot != slot);
    }

    /// Blocks recorded for `worker_id`: its entries as of the last
    /// recording (expiry runs when one is made).
    pub fn held_blocks(&self, worker_id: &str) -> usize {
        self.workers
            .get(worker_id)
            .map_or(0, |slot| *self.workers.state(slot))
    }

    /// Distinct blocks recorded for any worker.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn stats(&self) -> ApproxStats {
        ApproxStats {
            workers: self.workers.len(),
            blocks: self.blocks.len(),
            entries: self.entries,
        }
    }

    /// Whether an entry recorded `at` still counts at `now`.
    fn alive(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) < self.ttl
    }

    /// Drops entries last recorded `ttl` or more before `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(record) = self.records.front() {
            match self.live(record) {
                Some(entry) if self.alive(entry.at, now) => break,
                _ => self.pop_oldest(),
            }
        }
    }

    /// Pops the oldest record, dropping its entry if the record is the entry's latest.
    fn pop_oldest(&mut self) {
        let Some(record) = self.records.pop_front() else {
            return;
        };
        if self.live(&record).is_none() {
            return;
        }
        if let Some(holding) = self.blocks.get_mut(&record.hash) {
            if holding.remove(record.slot) {
                self.entries -= 1;
                *self.workers.state_mut(record.slot) -= 1;
            }
            if holding.entries.is_empty() {
                self.blocks.remove(&record.hash);
            }
        }
    }

    /// The entry `record` is the latest recording of, if it still is.
    fn live(&self, record: &Record) -> Option<&Entry> {
        self.blocks
            .get(&record.hash)?
            .entries
            .iter()
            .find(|e| e.slot == record.slot && e.seq == record.seq)
    }

    /// Drops superseded records once they outnumber live ones, so a prefix
    /// recorded over and over (a shared system prompt) costs memory once.
    fn compact(&mut self) {
        if self.records.len() > 2 * self.entries + 1024 {
            let records = std::mem::take(&mut self.records);
            self.records = records
                .into_iter()
                .filter(|r| self.live(r).is_some())
                .collect();
        }
    }
}

impl Holding {
    /// Records or refreshes the entry of `entry.slot`; true if it is new.
    fn upsert(&mut self, entry: Entry) -> bool {
        let new = match self.entries.iter_mut().find(|e| e.slot == entry.slot) {
            Some(old) => {
                *old = entry;
                false
            }
            None => {
                self.entries.push(entry);
                self.holders.insert(entry.slot);
                true
            }
        };
        self.update_oldest();
        new
    }

    /// Removes the entry of `slot`; true if there was one.
    fn remove(&mut self, slot: Slot) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.slot != slot);
        self.holders.remove(slot);
        self.update_oldest();
        self.entries.len() < before
    }

    fn update_oldest(&mut self) {
        if let Some(oldest) = self.entries.iter().map(|e| e.at).min() {
            self.oldest = oldest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(n: u64) -> Vec<BlockHash> {
        (0..n).map(BlockHash).collect()
    }

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn recorded_prefixes_overlap_until_they_expire() {
        let t0 = Instant::now();
        let mut index = ApproxIndex::new(TTL, 100);
        index.record("a", &prompt(4), t0);
        index.record("b", &prompt(2), t0 + Duration::from_secs(5));
        let found = index.overlaps(&prompt(4), t0 + Duration::from_secs(9));
        assert_eq!((found.blocks("a"), found.blocks("b")), (4, 2));
        let later = index.overlaps(&prompt(4), t0 + TTL);
        assert_eq!((later.blocks("a"), later.blocks("b")), (0, 2));
        // Recording drops a's expired entries; re-recording refreshes b's first block.
        index.record("b", &prompt(1), t0 + Duration::from_secs(12));
        assert_eq!(index.stats().entries, 2);
        assert_eq!((index.held_blocks("a"), index.held_blocks("b")), (0, 2));
        let found = index.overlaps(&prompt(4), t0 + Duration::from_secs(16));
        assert_eq!(found.blocks("b"), 1);
    }

    #[test]
    fn the_oldest_entries_are_evicted_beyond_the_bound() {
        let t0 = Instant::now();
        let mut index = ApproxIndex::new(TTL, 5);
        index.record("a", &prompt(3), t0);
        index.record("b", &prompt(2), t0 + Duration::from_secs(1));
        // Refreshing a's first block makes its blocks 1 and 2 the oldest.
        index.record("a", &prompt(1), t0 + Duration::from_secs(2));
        index.record("c", &prompt(2), t0 + Duration::from_secs(3));
        assert_eq!(index.stats().entries, 5);
        let held = ["a", "b", "c"].map(|w| index.held_blocks(w));
        assert_eq!(held, [1, 2, 2], "evictions count against their worker");
        let found = index.overlaps(&prompt(3), t0 + Duration::from_secs(4));
        assert_eq!(found.blocks("a"), 1);
        assert_eq!(found.blocks("b"), 2);
        assert_eq!(found.blocks("c"), 2);
    }

    #[test]
    fn time_passed_backwards_does_not_unexpire() {
        let t0 = Instant::now();
        let mut index = ApproxIndex::new(TTL, 100);
        index.record("a", &prompt(2), t0 + TTL);
        index.record("b", &prompt(2), t0);
        // b's entries count as recorded at the latest time seen.
        let found = index.overlaps(&prompt(2), t0 + TTL + Duration::from_secs(5));
        assert_eq!(found.blocks("b"), 2);
    }

    #[test]
    fn remove_worker_purges_its_entries() {
        let t0 = Instant::now();
        let mut index = ApproxIndex::new(TTL, 100);
        index.record("a", &prompt(3), t0);
        index.record("b", &prompt(1), t0);
        index.remove_worker("a");
        assert_eq!(index.stats().entries, 1);
        assert_eq!(index.held_blocks("a"), 0);
        index.record("c", &prompt(1), t0);
        let found = index.overlaps(&prompt(3), t0);
        assert_eq!(found.blocks("a"), 0);
        assert_eq!(found.blocks("c"), 1);
        assert_eq!(found.blocks("b"), 1);
    }

    #[test]
    fn repeated_records_do_not_pile_up() {
        let t0 = Instant::now();
        let mut index = ApproxIndex::new(TTL, 1000);
        for i in 0..10_000 {
            index.record("a", &prompt(8), t0 + Duration::from_micros(i));
        }
        assert_eq!(index.stats().entries, 8);
        assert!(index.records.len() <= 2 * 8 + 1024 + 8);
    }
}
