#!/usr/bin/env bash
# Set up a fresh machine (idempotent), build agentrt and serve the default model and plugins.
# Extra arguments go to `agentrt serve` (e.g. --listen 0.0.0.0:8080 --plugins ./my-plugins).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh
cargo build --release --bin agentrt
exec "$CARGO_TARGET_DIR/release/agentrt" serve "$@"
