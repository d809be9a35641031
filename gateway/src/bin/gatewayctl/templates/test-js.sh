#!/usr/bin/env bash
# Builds {{name}}.wasm with rolldown and componentize-js, then replays
# decisions.jsonl (a gateway's `plugins.decision_log`) through it: every
# decision must agree.
set -euo pipefail
cd "$(dirname "$0")"
tools="${JS_TOOLS:-$HOME/.cache/llmgw/js/node_modules/.bin}"
"$tools/rolldown" policy.js -o bundle.js -f esm -p neutral -e 'llmgw:policy/host@0.2.0' >/dev/null
"$tools/componentize-js" --wit wit --world-name policy -d http fetch-event -o {{name}}.wasm bundle.js >/dev/null
out=$(gatewayctl plugin replay {{name}}.wasm decisions.jsonl)
echo "$out"
grep -q "(100.0%)" <<<"$out"
