#!/usr/bin/env bash
# Set up a fresh machine (idempotent) and run every check and test of the project:
# formatting, clippy, the guest plugins' unit tests, the Python check's unit tests, and the
# runtime's unit, reference and end-to-end tests (release profile: the engine is unusable
# unoptimised, and one profile means the heavy dependencies are built once).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh

# Where setup.sh installed NVRTC, the kernel tests must compile every kernel (not skip); and on
# x86-64 the AVX2 kernels must be tested, not skipped (AVX-512 is left to the CPU: add
# AGENTRT_REQUIRE_SIMD=avx2,avx512 on a runner known to have it).
if [[ "$(uname -m)" == "x86_64" ]]; then
    export AGENTRT_REQUIRE_NVRTC=1
    export AGENTRT_REQUIRE_SIMD="${AGENTRT_REQUIRE_SIMD:-avx2}"
fi

step() { printf '\n==> %s\n' "$*"; }

# The official openai client, for the API compatibility test (pinned with hashes for the
# CPython 3.11 x86-64 this project's machines run; elsewhere that test says why it skips).
OPENAI_VENV="$AGENTRT_HOME/venv-openai"
if [[ "$(uname -m)" == "x86_64" ]] && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    want="$(sha256sum scripts/openai-requirements.txt | cut -d' ' -f1)"
    if [[ ! -x "$OPENAI_VENV/bin/python" || "$(cat "$OPENAI_VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]]; then
        rm -rf "$OPENAI_VENV"
        python3 -m venv "$OPENAI_VENV"
        "$OPENAI_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --require-hashes -r scripts/openai-requirements.txt
        printf '%s\n' "$want" >"$OPENAI_VENV/.requirements.sha256"
    fi
    export AGENTRT_REQUIRE_OPENAI=1
fi

# Headless Chromium (Debian's) and playwright-core (npm, pinned with its integrity hash by
# tests/console/package-lock.json) for the web console's browser test.
CONSOLE_TEST="$AGENTRT_HOME/console-test"
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    missing=()
    command -v chromium >/dev/null || missing+=(chromium)
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    if ((${#missing[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi
want="$(cat tests/console/package.json tests/console/package-lock.json | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$CONSOLE_TEST/.lock.sha256" 2>/dev/null)" != "$want" ]]; then
    rm -rf "$CONSOLE_TEST"
    mkdir -p "$CONSOLE_TEST"
    cp tests/console/package.json tests/console/package-lock.json "$CONSOLE_TEST/"
    (cd "$CONSOLE_TEST" && npm ci --no-audit --no-fund --silent)
    printf '%s\n' "$want" >"$CONSOLE_TEST/.lock.sha256"
fi
export AGENTRT_PLAYWRIGHT="$CONSOLE_TEST/node_modules/playwright-core"
export AGENTRT_REQUIRE_BROWSER=1

step "formatting"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)
(cd tests/plugins && cargo fmt --all -- --check)

step "guest plugins: unit tests of their logic (host target)"
(cd plugins && cargo test --quiet --target-dir "$CARGO_TARGET_DIR/plugins-host" --workspace)

step "python quality check: unit tests"
"$AGENTRT_HOME/venv/bin/python" -m unittest discover -s plugins/python-quality -p 'test_*.py'

step "python syntax corpus: expected verdicts re-checked against CPython 3.12 for WASI"
"$AGENTRT_HOME/venv/bin/python" tests/fixtures/python-syntax/make_expected.py --check

step "clippy (without and with the GPU engine)"
cargo clippy --release --all-targets -- -D warnings
cargo clippy --release --all-targets --features agentrt/cuda -- -D warnings

# Built with the GPU engine: its kernels compile to PTX here (NVRTC from PyPI) and its GPU
# tests say why they skip on a machine without one (scripts/gpu-check.sh runs them on a GPU).
# The PostgreSQL run store is tested against a real server, started here and stopped on exit.
source scripts/test-postgres.sh
step "PostgreSQL for the store tests"
start_test_postgres
trap stop_test_postgres EXIT

step "runtime: unit, reference and end-to-end tests (with --features cuda)"
cargo test --release --workspace --features agentrt/cuda -- --test-threads "${AGENTRT_TEST_THREADS:-4}"
