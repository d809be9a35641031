#!/usr/bin/env bash
# The embedded demo: a gateway on 127.0.0.1:8080 (admin :9090) in front of
# three sim workers, in one process, with no external service.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-plugins.sh
exec cargo run --release -p gateway --bin gateway -- demo "$@"
