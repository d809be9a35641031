//! What std would give a component and a `no_std` one must bring: an
//! allocator, a panic handler, and the canonical ABI's `cabi_realloc`.
//!
//! Without std a policy component imports nothing from WASI, carries no
//! formatting machinery for panic messages, and is about half the size
//! (`bench policy` prints it). The C string functions that
//! `core` calls (`memcmp`, …) come from wasi-libc; see `build.rs`.

use core::alloc::Layout;

// The allocator std uses on this target, as a crate.
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// A panic is a trap: the host counts it and falls back for that request.
/// No message, since there is nowhere to print it and formatting it would
/// cost what leaving std saved.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// The canonical ABI's allocator, through which the host passes strings and
/// lists into the guest (std exports it on `wasm32-wasip2`).
///
/// # Safety
///
/// Called by the host only, per the canonical ABI: `old` with `old_len` and
/// `align` describe a block this allocator returned, or `old_len` is 0.
#[unsafe(no_mangle)]
unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    // SAFETY: the layouts are the ones the block was allocated with (the
    // caller's contract), and a zero-sized request never reaches `alloc`.
    let ptr = unsafe {
        if old_len == 0 {
            if new_len == 0 {
                // The ABI's empty allocation: aligned and never read.
                return align as *mut u8;
            }
            alloc::alloc::alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            let old_layout = Layout::from_size_align_unchecked(old_len, align);
            alloc::alloc::realloc(old, old_layout, new_len)
        }
    };
    if ptr.is_null() {
        // Out of memory: the host's memory limit was reached.
        core::arch::wasm32::unreachable()
    }
    ptr
}
