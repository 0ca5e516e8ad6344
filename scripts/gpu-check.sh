#!/usr/bin/env bash
# The GPU engine's checks and benchmark in one command, on a machine with an NVIDIA GPU
# (docs/GPU.md):
#
#   scripts/gpu-check.sh                    build with `--features cuda`, then everything below
#   AGENTRT_GPU_BIN=DIR scripts/gpu-check.sh   use prebuilt, stripped `cuda_engine` (the test
#                                           binary) and `gpu` (the benchmark) from DIR, for GPU
#                                           machines without a Rust toolchain
#
# 1. the device, driver and NVRTC found;
# 2. every kernel and whole models against the CPU engine (tests/cuda_engine.rs), a missing GPU
#    being a failure here (AGENTRT_REQUIRE_GPU=1);
# 3. the decode benchmark (benches/gpu.rs) and HF transformers on the same 1B checkpoint;
# 4. compute-sanitizer memcheck over the kernel tests and one whole model (when installed).
#
# AGENTRT_GPU_STEPS (default "tests,bench,peer,memcheck"; "profile" adds per-kernel times from
# Nsight Compute) picks steps; AGENTRT_GPU_TESTS="NAME ..." runs only the tests whose names
# contain one of them; AGENTRT_NCU_ARGS replaces the profile's metrics (e.g. "--section
# Occupancy --section WarpStateStats"); AGENTRT_GPU_LOG=DIR also
# writes each step's output there. Exits non-zero when a test or memcheck fails.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
STEPS="${AGENTRT_GPU_STEPS:-tests,bench,peer,memcheck}"
LOG="${AGENTRT_GPU_LOG:-}"
[[ -n "$LOG" ]] && mkdir -p "$LOG"
status=0

step() { printf '\n==> %s\n' "$*"; }
logged() { # NAME COMMAND...: run, show, keep a copy
    local name="$1"
    shift
    if [[ -n "$LOG" ]]; then "$@" 2>&1 | tee "$LOG/$name.log"; else "$@" 2>&1; fi
}
want() { [[ ",$STEPS," == *",$1,"* ]]; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv || true
# NVRTC: the toolkit's or a PyPI wheel's, whichever is installed (12 or 13).
nvrtc="$(find /usr/local/cuda*/ /opt /usr/lib/x86_64-linux-gnu "$AGENTRT_HOME/nvrtc" -name 'libnvrtc.so.1[23]' 2>/dev/null | head -n 1)"
if [[ -n "$nvrtc" ]]; then
    export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "NVRTC: $nvrtc"
else
    echo "NVRTC not found; the kernels cannot be compiled" >&2
    exit 1
fi

# cuBLAS for prefill: the toolkit's or the one PyPI's nvidia-cublas wheels put beside torch.
# Without it the engine prefills with its GEMV kernel (and says so).
sites="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
cublas="$(find /usr/local/cuda*/ /opt /usr/lib/x86_64-linux-gnu $sites -name 'libcublas.so.1[23]' 2>/dev/null | head -n 1)"
if [[ -n "$cublas" ]]; then
    export LD_LIBRARY_PATH="$(dirname "$cublas"):$LD_LIBRARY_PATH"
    echo "cuBLAS: $cublas"
    export AGENTRT_REQUIRE_CUBLAS=1  # found, so its test must not skip
else
    echo "cuBLAS not found: prefill will use the GEMV kernel"
fi

BIN="${AGENTRT_GPU_BIN:-}"
if [[ -z "$BIN" ]]; then
    step "build (--features cuda)"
    BIN="$(mktemp -d)"
    cargo build --release --features cuda -p agentrt --tests --benches \
        --message-format=json-render-diagnostics >"$BIN/build.json" || exit 1
    # The executables this build made, as cargo names them: not the newest file of that name
    # in deps, which a build without the cuda feature may have left (with no GPU tests in it).
    python3 -c '
import json, shutil, sys
out = sys.argv[1]
wanted = {"cuda_engine", "gpu"}
made = {}
for line in open(out + "/build.json"):
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable"):
        if message["target"]["name"] in wanted:
            made[message["target"]["name"]] = message["executable"]
if wanted - made.keys():
    sys.exit("the build made no %s binary" % ", ".join(sorted(wanted - made.keys())))
for name, path in made.items():
    shutil.copy(path, "%s/%s" % (out, name))
' "$BIN" || exit 1
fi

export AGENTRT_REQUIRE_GPU=1
if want tests; then
    step "kernels and models against the CPU engine"
    # shellcheck disable=SC2086 # AGENTRT_GPU_TESTS: test-name filters, word-split on purpose
    logged tests "$BIN/cuda_engine" --test-threads 1 --nocapture ${AGENTRT_GPU_TESTS:-} || status=1
fi

if want bench; then
    step "decode benchmark"
    logged bench "$BIN/gpu" || status=1
fi

if want peer; then
    step "HF transformers on the same starcoderbase-1b-shaped checkpoint"
    dir="${AGENTRT_BENCH_1B_DIR:-$AGENTRT_HOME/bench/starcoderbase-1b-f16}"
    if [[ -f "$dir/config.json" ]]; then
        logged peer python3 scripts/gpu/hf_peer.py "$dir" "${AGENTRT_BENCH_PROMPT:-128}" \
            "${AGENTRT_BENCH_DECODE:-256}" || status=1
    else
        echo "no checkpoint at $dir (the bench step writes it): skipped"
    fi
fi
if want memcheck; then
    step "compute-sanitizer memcheck"
    if command -v compute-sanitizer >/dev/null; then
        logged memcheck timeout "${AGENTRT_MEMCHECK_TIMEOUT:-600}" compute-sanitizer --tool memcheck --error-exitcode 9 \
            "$BIN/cuda_engine" --test-threads 1 norms embedding gemv cublas qkv_projection attention dequantisation \
            device_sampling the_engine_runs_on_the_gpu || status=1
    else
        echo "compute-sanitizer is not installed: skipped"
    fi
fi

if want profile; then
    step "per-kernel times of steady-state decode (Nsight Compute), starcoderbase-1b shape"
    if command -v ncu >/dev/null; then
        logged profile env AGENTRT_BENCH_MODELS=1b AGENTRT_BENCH_PROMPT=8 AGENTRT_BENCH_DECODE=4 \
            ncu ${AGENTRT_NCU_ARGS:---metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed} \
            -k 'regex:^(embed|row_norm|gemv|gemv_decode|attn_decode|argmax)$' \
            --launch-skip "${AGENTRT_NCU_SKIP:-200}" --launch-count 16 "$BIN/gpu" || true
    else
        echo "ncu is not installed: skipped"
    fi
fi
exit "$status"
