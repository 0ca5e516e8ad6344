#!/usr/bin/env bash
# Builds llama.cpp's `llama-bench` as a peer benchmark for agentrt, from source only.
#
# Source: the llama.cpp tree that llama-cpp-python vendors in its PyPI sdist
# (vendor/llama.cpp), fetched with pip and checked against a pinned sha256, so the
# build needs nothing beyond the package registries (PyPI, Debian apt).
#
# Idempotent: a present, verified sdist is not downloaded again, an unpacked tree
# is reused, and the CMake build is incremental. Everything lives under
# $AGENTRT_HOME/peers/:
#   llama_cpp_python-<ver>.tar.gz   the sdist
#   llama_cpp_python-<ver>/         the unpacked sdist
#   llama.cpp-build/                the CMake build folder (bin/llama-bench)
#
# The build is CPU only (-march=native via GGML_NATIVE, no CUDA/Metal/BLAS/curl/
# OpenSSL), compiles only the llama-bench target, at nice 19 with -j2.
# Prints the path of the llama-bench binary on its last line of stdout.
#
# Usage: scripts/peer-llama-cpp.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
source "$here/env.sh"

# Pinned source. llama-cpp-python 0.3.36 vendors ggml-org/llama.cpp@0c1e57098
# (per its CHANGELOG.md). The sha256 is the one PyPI publishes for this sdist.
LCP_VERSION="0.3.36"
LCP_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

peers="$AGENTRT_HOME/peers"
sdist="$peers/llama_cpp_python-$LCP_VERSION.tar.gz"
src_root="$peers/llama_cpp_python-$LCP_VERSION"
src="$src_root/vendor/llama.cpp"
build="$peers/llama.cpp-build"
jobs=2

log() { printf '[peer-llama-cpp] %s\n' "$*" >&2; }

mkdir -p "$peers"

# 1. Toolchain: cmake and a C++ compiler, from apt only when missing. cmake must be
#    there before `pip download`: pip prepares the sdist's metadata, and the build
#    backend (scikit-build-core) asks for a cmake wheel when no system cmake is found.
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || missing+=(g++)
if ((${#missing[@]})); then
  log "installing missing tools with apt-get: ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y cmake g++ >&2
fi

# 2. The sdist, from PyPI with pip.
if [[ -x "$AGENTRT_HOME/venv/bin/python" ]]; then
  py="$AGENTRT_HOME/venv/bin/python"
else
  py="$(command -v python3)"
fi

sha_ok() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$LCP_SHA256" ]]; }

if ! sha_ok "$sdist"; then
  rm -f "$sdist"
  log "downloading llama-cpp-python==$LCP_VERSION sdist from PyPI"
  # `--no-binary llama-cpp-python` rather than `:all:`: pip still builds the sdist's
  # metadata, and `:all:` would make it build the build backend's own dependencies
  # (cmake, ninja) from source too, which takes far longer than llama.cpp itself.
  "$py" -m pip download --quiet --no-deps \
    --no-binary llama-cpp-python \
    --dest "$peers" "llama-cpp-python==$LCP_VERSION" >&2
fi
if ! sha_ok "$sdist"; then
  log "sha256 mismatch (or file missing) for $sdist; expected $LCP_SHA256"
  exit 1
fi
log "sdist verified: sha256 $LCP_SHA256"

# 3. Unpack (once; a stamp marks a complete unpack).
if [[ ! -f "$src_root/.unpacked" ]]; then
  log "unpacking into $src_root"
  rm -rf "$src_root"
  tar -xzf "$sdist" -C "$peers"
  touch "$src_root/.unpacked"
fi
if [[ ! -f "$src/CMakeLists.txt" || ! -d "$src/tools/llama-bench" ]]; then
  log "no vendored llama.cpp with tools/llama-bench in $src"
  exit 1
fi

# 4. Configure. A build folder configured from another source tree (another pinned
#    version) is started afresh: CMake refuses to switch sources.
if [[ -f "$build/CMakeCache.txt" ]] &&
  ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$src" "$build/CMakeCache.txt"; then
  log "build folder belongs to another source tree; clearing $build"
  rm -rf "$build"
fi

log "configuring $build"
nice -n 19 cmake -S "$src" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON \
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
  -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF -DGGML_OPENCL=OFF -DGGML_RPC=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON >&2

# 5. Build only llama-bench.
log "building llama-bench (-j$jobs, nice 19)"
nice -n 19 cmake --build "$build" --config Release --target llama-bench -j "$jobs" >&2

bin="$build/bin/llama-bench"
if [[ ! -x "$bin" ]]; then
  log "build finished but $bin is missing"
  exit 1
fi
echo "$bin"
