# Source this to run cargo by hand with the same LibTorch the Makefile uses:
#   . scripts/env.sh && cargo test -p meridian-optimizer
# torch-sys finds LibTorch through the Python on PATH when LIBTORCH_USE_PYTORCH=1.
_meridian_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
export LIBTORCH_USE_PYTORCH=1
export VIRTUAL_ENV="$_meridian_root/.venv"
export PATH="$_meridian_root/.venv/bin:$PATH"
unset _meridian_root
