#!/usr/bin/env bash
# Fuzzes the parsers that face the network with cargo fuzz (libFuzzer): each
# target of fuzz/ (or those named) for RUNS executions, 10 million by default.
# Installs what only this command needs when missing: the nightly toolchain
# and cargo-fuzz. The corpus grows under ${LLMGW_CACHE:-$HOME/.cache/llmgw}/fuzz,
# seeded from fuzz/corpus; an input that crashes a target is written to
# fuzz/regressions/<target>/, which the test suite replays once it is fixed.
# Without a sanitizer: the code fuzzed is safe Rust, so a crash is a panic,
# which libFuzzer catches as is, at several times the speed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-10000000}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cache="${LLMGW_CACHE:-$HOME/.cache/llmgw}/fuzz"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(openai_request sse_relay kv_events worker_reports config)
for target in "${targets[@]}"; do
  mkdir -p "$cache/corpus/$target" "fuzz/regressions/$target"
  cp -n fuzz/corpus/"$target"/* "$cache/corpus/$target/"
  cargo +nightly fuzz run "$target" --features libfuzzer --sanitizer none --release \
    "$cache/corpus/$target" -- -runs="$runs" -max_len=4096 -timeout=10 \
    -artifact_prefix="fuzz/regressions/$target/" -print_final_stats=1
done
