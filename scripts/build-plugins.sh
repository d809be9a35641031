#!/usr/bin/env bash
# Builds the policy plugins to wasm32-wasip2 components (cargo profile
# `plugin`: LTO, no debug info) and lays them out as the gateway's plugin
# directory expects: target/plugins/{plugin}/{version}.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
plugins=(failover canary blue-green zone-affinity hostile)
args=()
for p in "${plugins[@]}"; do args+=(-p "policy-$p"); done
cargo build --quiet --profile plugin --target wasm32-wasip2 "${args[@]}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
for p in "${plugins[@]}"; do
  mkdir -p "target/plugins/$p"
  cp "target/wasm32-wasip2/plugin/policy_${p//-/_}.wasm" "target/plugins/$p/$version.wasm"
done
# A `wasi:cli/command` component: the tests' "wrong world" plugin.
cp target/wasm32-wasip2/plugin/not_a_policy.wasm target/plugins/wrong-world.wasm
echo "plugins: target/plugins/{$(IFS=,; echo "${plugins[*]}")}/$version.wasm"
