#!/usr/bin/env bash
# Builds the python-quality plugin into a WebAssembly component (world `quality-check`).
#
# Usage: plugins/python-quality/build.sh OUT.wasm
#
# Needs componentize-py from scripts/setup.sh ($AGENTRT_HOME/venv, AGENTRT_HOME defaulting to
# ~/.cache/agentrt); COMPONENTIZE_PY may name another binary of the same version. Works offline.
#
# Steps: stage app.py + checks.py alone (so nothing else lands in the component), generate the
# `wit_world` bindings into the build folder and import app.py with them on the host's Python as
# a quick smoke test, then let componentize-py build the component. componentize-py imports
# app.py at build time and snapshots the initialised interpreter; at run time the component has
# no file system, so app.py imports at the top every module used later.
#
# The output (about 37 MB, about 30-40 s on 2 cores) is written to OUT.wasm.tmp, then renamed.
set -euo pipefail

die() {
    printf 'python-quality/build.sh: error: %s\n' "$*" >&2
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 OUT.wasm"
out="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wit="$(cd "$here/../../wit" && pwd)"
agentrt_home="${AGENTRT_HOME:-$HOME/.cache/agentrt}"
componentize_py="${COMPONENTIZE_PY:-$agentrt_home/venv/bin/componentize-py}"
python="$(dirname "$componentize_py")/python"
[[ -x "$componentize_py" ]] ||
    die "componentize-py not found at $componentize_py; run scripts/setup.sh first"

work="$(mktemp -d "${TMPDIR:-/tmp}/python-quality-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/app" "$work/bindings"
cp "$here/app.py" "$here/checks.py" "$work/app/"

# A venv of the caller must not leak its site-packages into the component.
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME

log="$work/build.log"
if ! "$componentize_py" -q -d "$wit" -w quality-check bindings "$work/bindings" >"$log" 2>&1; then
    cat "$log" >&2
    die "generating bindings failed"
fi

# Smoke test on the host's Python (>= 3.11, as the bindings use typing.Self): catches a broken
# import or describe() in a second instead of after the build.
if [[ -x "$python" ]] && "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    if ! (cd "$work/app" && PYTHONPATH="$work/app:$work/bindings" "$python" -c '
import app
info = app.WitWorld().describe()
assert info.name == "python-quality", info
' >"$log" 2>&1); then
        cat "$log" >&2
        die "app.py does not import or describe() fails with the generated bindings"
    fi
fi

mkdir -p "$(dirname "$out")"
if ! (cd "$work" && "$componentize_py" -q -d "$wit" -w quality-check componentize \
    -p "$work/app" app -o "$out.tmp") >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$out.tmp"
    die "componentize-py failed"
fi
mv -f "$out.tmp" "$out"
