# Shared environment of the project's scripts: where the cache and the build folder live.
# Sourced, not executed.
export AGENTRT_HOME="${AGENTRT_HOME:-$HOME/.cache/agentrt}"
# One target folder outside the clone, reused by every build and every CI run on this machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTRT_HOME/target}"
# NVRTC from PyPI (scripts/setup.sh), found by the CUDA backend's dynamic loader. Added whether
# the folder exists yet or not: on a fresh machine setup.sh creates it after this is sourced.
case ":${LD_LIBRARY_PATH:-}:" in
    *":$AGENTRT_HOME/nvrtc:"*) ;;
    *) export LD_LIBRARY_PATH="$AGENTRT_HOME/nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
esac
