#!/usr/bin/env bash
# Builds {{name}}.wasm with componentize-py, then replays decisions.jsonl (a
# gateway's `plugins.decision_log`) through it: every decision must agree.
set -euo pipefail
cd "$(dirname "$0")"
PYTHONDONTWRITEBYTECODE=1 componentize-py -d wit -w policy componentize policy -p . -o {{name}}.wasm >/dev/null
out=$(gatewayctl plugin replay {{name}}.wasm decisions.jsonl)
echo "$out"
grep -q "(100.0%)" <<<"$out"
