#!/usr/bin/env bash
# Everything `make demo` and `make test` need, installed idempotently: a quick no-op when
# already there. Needs only a Rust toolchain (with rustfmt and clippy) and Python 3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: '$1' not found: $2" >&2; exit 1; }; }
need cargo "install a Rust toolchain (rustup) first"
need python3 "install Python 3 (with venv and pip) first"
cargo fmt --version >/dev/null 2>&1 || { echo "setup: rustfmt missing: rustup component add rustfmt" >&2; exit 1; }
cargo clippy --version >/dev/null 2>&1 || { echo "setup: clippy missing: rustup component add clippy" >&2; exit 1; }
# A C++ compiler builds torch-sys's wrapper around LibTorch.
if ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
  else
    echo "setup: a C++ compiler (g++) is needed: apt-get install g++" >&2; exit 1
  fi
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  else
    echo "setup: Python's venv module is needed: apt-get install python3-venv" >&2; exit 1
  fi
}

# A full test build needs a few GB beside the (cached) LibTorch; say so up front rather
# than let the linker fail half-way with "No space left on device".
need_gb=8
target=${CARGO_TARGET_DIR:-$root/target}
probe=$target; while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
free_kb=$(df -Pk "$probe" | awk 'NR == 2 { print $4 }')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((need_gb * 1024 * 1024)) ]; then
  echo "setup: warning: only $((free_kb / 1024)) MiB free under $probe; building and testing" \
       "needs about $need_gb GiB (set CARGO_TARGET_DIR to a roomier disk)" >&2
fi

bash "$root/scripts/setup-torch.sh"
bash "$root/scripts/setup-corpus.sh"
# The Python package (skipped by `make demo`, which needs only the binary).
if [ "${MERIDIAN_SETUP_PYTHON:-1}" != 0 ]; then
  bash "$root/scripts/setup-python.sh"
fi
