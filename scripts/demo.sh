#!/usr/bin/env bash
# The embedded demo: a gateway on 127.0.0.1:8080 (admin :9090) in front of
# three workers serving SmolLM2-135M-Instruct on the CPU, in one process, with
# no external service. `scripts/demo.sh --sim` serves sim workers instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-plugins.sh
if [ "${1:-}" = "--sim" ]; then
  shift
  exec cargo run --release -p demo --bin llmgw-demo -- "$@"
fi
model="$(scripts/fetch-model.sh)"
exec cargo run --release -p demo --bin llmgw-demo -- --model "$model" "$@"
