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
/// First it tells the host where it happened and, when the message is a
/// plain literal, what it said (the host puts both in the trap's error).
/// Built by hand: `core::fmt` would cost what leaving std saved.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut line = alloc::string::String::from("panicked at ");
    if let Some(at) = info.location() {
        line.push_str(at.file());
        for n in [at.line(), at.column()] {
            line.push(':');
            push_decimal(&mut line, n);
        }
    }
    line.push_str(": ");
    line.push_str(info.message().as_str().unwrap_or("(a formatted message)"));
    crate::host::log(crate::Level::Error, &line);
    core::arch::wasm32::unreachable()
}

fn push_decimal(out: &mut alloc::string::String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(d as char);
    }
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
