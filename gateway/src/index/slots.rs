//! Worker ids mapped to small dense slot numbers, so a set of workers is a
//! bitset and per-worker state is a vector index.

use std::collections::HashMap;
use std::sync::Arc;

/// A worker's position in an index. Slots of removed workers are reused, so
/// the highest slot, and with it the width of every bitset, stays below the
/// most workers the index has held at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(pub(crate) u32);

impl Slot {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// The workers of an index, each with its state `T`.
pub(crate) struct Slots<T> {
    by_id: HashMap<Arc<str>, Slot>,
    /// `None` where a slot is free.
    entries: Vec<Option<(Arc<str>, T)>>,
    free: Vec<Slot>,
}

impl<T> Slots<T> {
    pub(crate) fn new() -> Slots<T> {
        Slots {
            by_id: HashMap::new(),
            entries: Vec::new(),
            free: Vec::new(),
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<Slot> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn get_or_insert_with(&mut self, id: &str, state: impl FnOnce() -> T) -> Slot {
        if let Some(slot) = self.get(id) {
            return slot;
        }
        let id: Arc<str> = Arc::from(id);
        let entry = Some((id.clone(), state()));
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot.index()] = entry;
                slot
            }
            None => {
                self.entries.push(entry);
                Slot(self.entries.len() as u32 - 1)
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<(Slot, T)> {
        let slot = self.by_id.remove(id)?;
        let (_, state) = self.entries[slot.index()].take()?;
        self.free.push(slot);
        Some((slot, state))
    }

    /// The worker id of an occupied slot.
    pub(crate) fn id(&self, slot: Slot) -> &Arc<str> {
        &self.occupied(slot).0
    }

    pub(crate) fn state(&self, slot: Slot) -> &T {
        &self.occupied(slot).1
    }

    pub(crate) fn state_mut(&mut self, slot: Slot) -> &mut T {
        match &mut self.entries[slot.index()] {
            Some((_, state)) => state,
            None => panic!("slot {} is free", slot.0),
        }
    }

    fn occupied(&self, slot: Slot) -> &(Arc<str>, T) {
        self.entries[slot.index()]
            .as_ref()
            .unwrap_or_else(|| panic!("slot {} is free", slot.0))
    }

    /// Words a bitset needs to hold every slot in use.
    pub(crate) fn words(&self) -> usize {
        self.entries.len().div_ceil(64)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &T)> {
        self.entries.iter().flatten().map(|(id, state)| (id, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_removed_workers_are_reused() {
        let mut slots = Slots::new();
        let a = slots.get_or_insert_with("a", || 1);
        let b = slots.get_or_insert_with("b", || 2);
        assert_eq!(slots.get_or_insert_with("a", || 9), a);
        assert_eq!(slots.remove("a"), Some((a, 1)));
        let c = slots.get_or_insert_with("c", || 3);
        assert_eq!(c, a);
        assert_eq!(&**slots.id(c), "c");
        assert_eq!(*slots.state(b), 2);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots.words(), 1);
    }
}
