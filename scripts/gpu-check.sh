#!/usr/bin/env bash
# The CUDA backend's check, for a bare CUDA machine (driver, toolkit, no Rust).
#
#   scripts/gpu-check.sh pack [KIT]   here: builds the kit (default target/gpu-kit)
#   scripts/gpu-check.sh run [KIT]    there: runs it, printing one table
#
# The kit is a stripped release build of workers/tests/gpu_check.rs (the CPU
# and CUDA backends in one binary) and the tiny test model it checks, as a
# quantized GGUF file and as f16 and bf16 Hugging Face directories; the random
# SmolLM2-shaped model of the throughput runs is generated where it runs.
# Carry the folder (under 64 MiB) to the CUDA machine with the repository and
# run `scripts/gpu-check.sh run` there: logits parity against the CPU backend,
# greedy text equality, and prefill and decode tokens/s at batch 1 and 8, in
# a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
command="${1:-}"
kit="${2:-target/gpu-kit}"
limit_mib=64

pack() {
    local built
    built=$(cargo test --release -p workers --features cuda --test gpu_check --no-run \
        --message-format=json-render-diagnostics |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_check" and m.get("executable"):
        print(m["executable"])')
    if [[ $(wc -l <<<"$built") -ne 1 || ! -x "$built" ]]; then
        echo "cannot tell which binary cargo built: '$built'" >&2
        exit 1
    fi
    rm -rf "$kit"
    mkdir -p "$kit"
    strip -o "$kit/gpu_check" "$built"
    # Writes the models into the kit and checks them on the CPU; the device's
    # checks show as ignored.
    LLMGW_GPU_KIT="$kit" "$kit/gpu_check"
    local bytes
    bytes=$(du -sb "$kit" | cut -f1)
    echo "gpu kit: $kit, $((bytes / 1024 / 1024)) MiB ($bytes bytes)"
    if ((bytes > limit_mib * 1024 * 1024)); then
        echo "the kit is over $limit_mib MiB" >&2
        exit 1
    fi
}

run() {
    if [[ ! -x "$kit/gpu_check" ]]; then
        echo "no kit at $kit: run scripts/gpu-check.sh pack first (where Rust is)" >&2
        exit 1
    fi
    local libraries
    libraries=$(ldconfig -p 2>/dev/null || true)
    if [[ $libraries != *libcuda.so* ]] && ! command -v nvidia-smi >/dev/null; then
        echo "no CUDA driver present (libcuda.so is not among the system's libraries): run this on a CUDA machine" >&2
        exit 2
    fi
    LLMGW_GPU_KIT="$kit" timeout 290 "$kit/gpu_check" --ignored --exact gpu_check --nocapture --test-threads 1
}

case "$command" in
pack) pack ;;
run) run ;;
*)
    echo "usage: scripts/gpu-check.sh pack|run [KIT]" >&2
    exit 64
    ;;
esac
