#!/usr/bin/env bash
# Meridian's checks that need a GPU, run from a kit made by scripts/gpu-kit.sh (this file is
# copied into it): CUDA kernel parity with the CPU backend, every outer algorithm with its
# state on the GPU, `meridian train --device cuda` with a stop and resume, GPU against CPU
# step time, and the fused-compress benchmark at 100M and 1B parameters.
#
#   gpu-kit/gpu-check.sh [OUT]     # logs and summaries in OUT (default gpu-kit/results)
#
# Fails when any check fails or when any test reports "skipped: no CUDA device" (on a GPU
# machine that means the probe, not the machine, is wrong). Needs python3 with torch 2.11
# (its LibTorch and NVIDIA wheels are what the binaries load) and a CUDA driver.
set -uo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
out=${1:-$kit/results}
mkdir -p "$out"
py=${PYTHON:-python3}

torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
  echo "gpu-check: $py cannot import torch" >&2
  exit 2
}
nvrtc=$("$py" - <<'PY'
import glob, os, site, torch
roots = site.getsitepackages() + [os.path.dirname(os.path.dirname(torch.__file__))]
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib"))):
        if glob.glob(os.path.join(d, "libnvrtc.so*")):
            print(d)
            raise SystemExit
PY
)
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -n "$nvrtc" ] && export MERIDIAN_NVRTC="$nvrtc"
export RUST_LOG=${RUST_LOG:-warn}
echo "kit $(cat "$kit/COMMIT" 2>/dev/null), LibTorch $torch_lib, NVRTC ${nvrtc:-not found}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

results=()
# step NAME COMMAND...: runs it, keeps its log, records PASS or FAIL.
step() {
  local name=$1
  shift
  echo
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.log"
  local status=${PIPESTATUS[0]}
  if [ "$status" -eq 0 ] && ! grep -q "skipped: no CUDA device" "$out/$name.log"; then
    results+=("PASS $name")
  else
    results+=("FAIL $name (exit $status$(grep -q 'skipped: no CUDA device' "$out/$name.log" && echo ', a test was skipped'))")
  fi
}

# Every outer algorithm's summary: on the GPU, replicas identical, validation loss down.
check_summary() {
  "$py" - "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["device"].startswith("cuda"), s["device"]
for a in s["algorithms"]:
    v0, v = a["initial_val_loss"], a["final_val_loss"]
    print(f'{a["algorithm"]:<11} val {v0:.4f} -> {v:.4f}  rounds {a["rounds"]}  wall {a["wall_seconds"]:.1f} s')
    assert v < v0, a["algorithm"]
PY
}

train() { "$kit/meridian" train --model mlp --data "$kit/corpus.txt" --workers 2 --steps 40 \
  --inner-steps 10 --algo ddp,diloco,sparseloco,demo,streaming --device cuda "$@"; }

step kernels "$kit/kernels-tests" cuda:: --test-threads=1 --nocapture
step optimizer "$kit/optimizer-tests" device --nocapture
step train train --out "$out/train" --overwrite
[ -f "$out/train/summary.json" ] && step train-summary check_summary "$out/train/summary.json"
step train-stop train --out "$out/resume" --overwrite --stop-after 20 --checkpoint-every 0
step train-resume train --out "$out/resume" --resume
# The GPT at its default size, the same steps on each device: seconds per step.
for dev in cpu cuda; do
  step "gpt-$dev" "$kit/meridian" train --model gpt --data "$kit/corpus.txt" --workers 2 \
    --steps 20 --inner-steps 10 --algo sparseloco --device "$dev" --out "$out/gpt-$dev" --overwrite
done
step bench "$kit/cuda_compress"

echo
printf '%s\n' "${results[@]}" | tee "$out/RESULTS"
! grep -q '^FAIL' "$out/RESULTS"
