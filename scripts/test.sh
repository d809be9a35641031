#!/usr/bin/env bash
# The whole test suite: setup, build the binaries the end-to-end tests start,
# then every unit and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace
