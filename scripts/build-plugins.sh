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

# The Python and JavaScript ports (plugins/py, plugins/js), built by
# componentize-py and componentize-js (with rolldown bundling each policy
# with its kit), which scripts/setup.sh installs; each only when its
# sources or the WIT changed since its last build.
js_tools="${LLMGW_CACHE:-$HOME/.cache/llmgw}/js/node_modules/.bin"
stale() { local out=$1; shift; [ ! -f "$out" ] || [ -n "$(find "$@" -newer "$out" -print -quit)" ]; }
ports=()
for p in canary zone-affinity hostile; do
  out="target/plugins/$p-py/$version.wasm"
  if stale "$out" "plugins/py/$p" plugins/py/common wit; then
    mkdir -p "target/plugins/$p-py" target/ports
    PYTHONDONTWRITEBYTECODE=1 componentize-py -d wit -w policy componentize policy \
      -p "plugins/py/$p" -p plugins/py/common -o "target/ports/$p-py.wasm" >/dev/null
    mv "target/ports/$p-py.wasm" "$out"
  fi
  out="target/plugins/$p-js/$version.wasm"
  if stale "$out" "plugins/js/$p" plugins/js/common wit; then
    mkdir -p "target/plugins/$p-js" target/ports
    "$js_tools/rolldown" "plugins/js/$p/policy.js" -o "target/ports/$p.js" -f esm -p neutral \
      -e 'llmgw:policy/host@0.2.0' >/dev/null
    "$js_tools/componentize-js" --wit wit --world-name policy -d http fetch-event \
      -o "target/ports/$p-js.wasm" "target/ports/$p.js" >/dev/null
    mv "target/ports/$p-js.wasm" "$out"
  fi
  ports+=("$p-py" "$p-js")
done
echo "plugins: target/plugins/{$(IFS=,; echo "${ports[*]}")}/$version.wasm"
