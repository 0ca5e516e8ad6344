#!/usr/bin/env bash
# Set up a fresh machine (idempotent), build agentrt and serve the default model and plugins.
# Extra arguments go to `agentrt serve` (e.g. --listen 0.0.0.0:8080 --plugins ./my-plugins).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh
# Build exactly what `scripts/test.sh` builds (binary and tests resolve dependency features
# together), so serving after testing, or testing after serving, compiles nothing twice.
cargo build --release --bins --tests
exec "$CARGO_TARGET_DIR/release/agentrt" serve "$@"
