//! A `no_std` component still needs `memcmp` and friends, which `core` calls
//! and which std links from wasi-libc on `wasm32-wasip2`; link them from the
//! same `libc.a` (the toolchain ships it). The linker keeps only the
//! functions used, none of which imports anything from WASI.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("wasm32-wasi") {
        println!("cargo:rustc-link-lib=c");
    }
}
