#!/usr/bin/env bash
# Builds everything the GPU checks run into one folder (default gpu-kit/), so that they can
# run on a GPU machine that has PyTorch 2.11 but no Rust toolchain: the CUDA kernel and
# optimizer test binaries, `meridian`, the CUDA benchmark, a slice of the corpus, and
# gpu-check.sh, which runs them all. Binaries are release builds, stripped; they find
# LibTorch and NVRTC through the Python there (see gpu-check.sh).
#
#   make gpu-kit && gpu-kit/gpu-check.sh OUT      # or: make gpu-check (Rust and a GPU here)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit=${1:-$root/gpu-kit}
cd "$root"
. scripts/env.sh

# The test binary cargo builds for one package's library tests.
test_binary() {
  cargo test --release --no-run --message-format=json -p "$1" --lib 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])'
}

cargo build --release -p meridian-trainer --bin meridian -p meridian-benches --bin cuda_compress
kernels=$(test_binary meridian-kernels)
optimizer=$(test_binary meridian-optimizer)
[ -n "$kernels" ] && [ -n "$optimizer" ] || { echo "gpu-kit: test binaries not found" >&2; exit 1; }

rm -rf "$kit"
mkdir -p "$kit"
strip -o "$kit/kernels-tests" "$kernels"
strip -o "$kit/optimizer-tests" "$optimizer"
strip -o "$kit/meridian" target/release/meridian
strip -o "$kit/cuda_compress" target/release/cuda_compress
# 4 MB of the corpus: enough for the short runs the checks make.
head -c 4000000 data/corpus.txt >"$kit/corpus.txt"
cp scripts/gpu-check.sh "$kit/gpu-check.sh"
git rev-parse --short HEAD >"$kit/COMMIT" 2>/dev/null || true
du -sh "$kit"
