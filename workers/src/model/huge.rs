//! Memory for the weights in huge pages, where the OS grants them.
//!
//! Why: a decode step streams every weight once, and with 4 KiB pages each
//! page costs a TLB miss and restarts the hardware prefetcher. Two copies of
//! SmolLM2 in one process, decoding in turns (2026-12-04): batch 1 at a
//! median 184 and 211 tok/s from huge pages against 156 and 176 tok/s from
//! small ones, in two runs of 16 decodes each. Huge pages come only in
//! whole 2 MiB-aligned ranges, which a layer's matrices (0.2–1.1 MB in
//! SmolLM2) are too small to fill alone, so the small ones are carved one
//! after another from shared mappings of [`CHUNK`] bytes. Every mapping is
//! advised before anything touches it: in Linux's transparent-huge-page mode
//! `madvise` (common, and this project's machines'), only advised memory gets
//! huge pages, and only at its first fault.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use bytemuck::Pod;
use memmap2::{MmapMut, MmapRaw};

/// Bytes of one shared mapping; buffers over a quarter of it get their own.
const CHUNK: usize = 64 << 20;

/// Where each buffer starts in its mapping: a cache line, so no two share one.
const ALIGN: usize = 64;

/// The mapping small buffers are carved from now, and its first free byte.
static ARENA: Mutex<Option<(Arc<MmapRaw>, usize)>> = Mutex::new(None);

/// A copy of some values of `T`, read-only.
pub struct HugeBuf<T> {
    map: Arc<MmapRaw>,
    /// In bytes, into `map`.
    offset: usize,
    len: usize,
    values: PhantomData<T>,
}

impl<T: Pod> HugeBuf<T> {
    /// Panics if the OS refuses the memory, as a `Vec` would abort.
    pub fn copy_of(values: &[T]) -> HugeBuf<T> {
        assert!(align_of::<T>() <= ALIGN);
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let (map, offset) = carve(bytes.len());
        // SAFETY: `offset..offset + bytes.len()` lies in `map` and `carve`
        // hands it out once, so nothing else reads or writes it.
        unsafe {
            let at = map.as_mut_ptr().add(offset);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len());
        }
        HugeBuf {
            map,
            offset,
            len: values.len(),
            values: PhantomData,
        }
    }
}

/// A range of `bytes` no other buffer has: the mapping and the range's start.
fn carve(bytes: usize) -> (Arc<MmapRaw>, usize) {
    if bytes > CHUNK / 4 {
        return (map(bytes), 0);
    }
    let mut arena = ARENA.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((map, free)) = arena.as_mut() {
        if *free + bytes <= CHUNK {
            let offset = *free;
            *free = (offset + bytes).next_multiple_of(ALIGN);
            return (map.clone(), offset);
        }
    }
    // The rest of a full mapping stays unused (and, untouched, uncommitted).
    let map = map(CHUNK);
    *arena = Some((map.clone(), bytes.next_multiple_of(ALIGN)));
    (map, 0)
}

fn map(bytes: usize) -> Arc<MmapRaw> {
    // A mapping cannot be empty.
    let map = MmapMut::map_anon(bytes.max(1)).expect("mapping memory for the weights");
    // A hint: where it is refused, the pages are small and all else the same.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Arc::new(MmapRaw::from(map))
}

impl<T: Pod> Deref for HugeBuf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the range is this buffer's alone and written only by
        // `copy_of`, with `len` values of `T`; mappings are page-aligned and
        // offsets multiples of `ALIGN`, which `copy_of` checked `T` needs at most.
        unsafe {
            let at = self.map.as_ptr().add(self.offset);
            std::slice::from_raw_parts(at.cast(), self.len)
        }
    }
}

impl<T: Pod> Clone for HugeBuf<T> {
    fn clone(&self) -> HugeBuf<T> {
        HugeBuf::copy_of(self)
    }
}

impl<T: Pod + PartialEq> PartialEq for HugeBuf<T> {
    fn eq(&self, other: &HugeBuf<T>) -> bool {
        **self == **other
    }
}

impl<T> fmt::Debug for HugeBuf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HugeBuf").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_hold_their_own_copies() {
        // Small ones share mappings (and fill more than one); a large one
        // has its own; an empty one is fine.
        let values = |i: usize, len: usize| -> Vec<u32> {
            (0..len).map(|j| (i * 7919 + j) as u32).collect()
        };
        let sizes = [1, 63, 64, 65, 1000, (4 << 20) - 1, 17, 0, CHUNK / 4 / 4 + 1];
        let bufs: Vec<(Vec<u32>, HugeBuf<u32>)> = (0..40)
            .map(|i| {
                let v = values(i, sizes[i % sizes.len()]);
                let buf = HugeBuf::copy_of(&v);
                (v, buf)
            })
            .collect();
        for (v, buf) in &bufs {
            assert_eq!(**buf, **v);
            assert_eq!(buf.clone(), *buf);
            assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
        }
    }
}
