#!/usr/bin/env bash
# One-time setup on a fresh machine; every step is skipped when already done.
# Installs: etcd, etcdctl and nats-server (Debian packages, for the
# control-plane and bus tests), protoc with its well-known types (the
# etcd-client crate compiles etcd's protobuf API when built), DejaVu fonts (bench charts), the `openai` Python client (its
# end-to-end test), numpy (the model's reference forward pass), pyzmq and
# msgspec (the vLLM/SGLang KV-event publisher of the tests), nginx (the load
# balancer in front of gateway replicas in a test, and `bench overhead`'s
# baseline), wrk (`bench overhead`'s client), promtool (Debian's
# prometheus package: the alert rules' tests), g++ and make
# (llama.cpp's server, built by scripts/llama-server.sh), the
# wasm32-wasip2 Rust target (plugins), and componentize-py and
# componentize-js with node (the Python and JavaScript policy ports).
set -euo pipefail

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v promtool >/dev/null || need_apt+=(prometheus)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
# llama.cpp's server is built from source for the engine tests (scripts/llama-server.sh).
command -v g++ >/dev/null || need_apt+=(g++)
# `strip`, for the GPU kit (scripts/gpu-check.sh pack).
command -v strip >/dev/null || need_apt+=(binutils)
command -v make >/dev/null || need_apt+=(make)
# The JavaScript policy ports are built with componentize-js, an npm package.
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c "import openai, numpy, zmq, msgspec" 2>/dev/null; then
  echo "setup: installing the openai Python client, numpy (the model reference test), pyzmq and msgspec (KV-event publisher)"
  python3 -m pip install --quiet --disable-pip-version-check openai numpy pyzmq msgspec
fi

# The policy ports (plugins/py, plugins/js): componentize-py from PyPI;
# componentize-js and the rolldown bundler from npm, kept outside the clone.
if ! command -v componentize-py >/dev/null; then
  echo "setup: installing componentize-py (Python policies)"
  python3 -m pip install --quiet --disable-pip-version-check componentize-py==0.25.1
  command -v pyenv >/dev/null && pyenv rehash || true
fi
js_tools="${LLMGW_CACHE:-$HOME/.cache/llmgw}/js"
if [ ! -x "$js_tools/node_modules/.bin/componentize-js" ] || [ ! -x "$js_tools/node_modules/.bin/rolldown" ]; then
  echo "setup: installing componentize-js and rolldown (JavaScript policies) into $js_tools"
  mkdir -p "$js_tools"
  npm install --silent --no-audit --no-fund --prefix "$js_tools" \
    @bytecodealliance/componentize-js@0.23.0 rolldown@1.3.4
fi

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2
fi
