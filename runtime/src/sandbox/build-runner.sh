#!/usr/bin/env bash
# Builds the pre-initialised test runner component (world `test-runner` of runner.wit):
# runner.py and runner_app.py, snapshotted by componentize-py after importing the standard
# library. Called by runtime/build.rs; needs componentize-py from scripts/setup.sh.
#
# Usage: runtime/src/sandbox/build-runner.sh OUT.wasm
set -euo pipefail

die() {
    printf 'build-runner.sh: error: %s\n' "$*" >&2
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 OUT.wasm"
out="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
agentrt_home="${AGENTRT_HOME:-$HOME/.cache/agentrt}"
componentize_py="${COMPONENTIZE_PY:-$agentrt_home/venv/bin/componentize-py}"
[[ -x "$componentize_py" ]] ||
    die "componentize-py not found at $componentize_py; run scripts/setup.sh first"

work="$(mktemp -d "${TMPDIR:-/tmp}/agentrt-runner-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/app"
cp "$here/runner.py" "$work/app/runner.py"
cp "$here/runner_app.py" "$work/app/app.py"
cp "$here/runner.wit" "$work/runner.wit"
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME

log="$work/build.log"
mkdir -p "$(dirname "$out")"
if ! (cd "$work" && "$componentize_py" -q -d "$work/runner.wit" -w test-runner componentize \
    -p "$work/app" app -o "$out.tmp") >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$out.tmp"
    die "componentize-py failed"
fi
mv -f "$out.tmp" "$out"
