#!/usr/bin/env bash
# Reruns the small-scale reproduction behind papers/reproduction.md: every outer algorithm
# on `make demo`'s GPT, corpus and token budget, plus the ablations the papers report, for
# each seed in SEEDS; then papers/reproduce_table.py turns the summaries into its tables.
# Three seeds take about 52 CPU-minutes (one LibTorch thread per run, JOBS seeds at a time):
# half an hour on 2 cores with nothing else running, 50 minutes measured beside a build. Usage: [SEEDS="0 1 2"] [JOBS=3] bash papers/reproduce.sh [OUT_DIR] (default
# out/reproduce); a seed's runs go to OUT_DIR/seed-N.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/out/reproduce}
seeds=${SEEDS:-0 1 2}
jobs=${JOBS:-3}
cd "$root"
bash scripts/setup.sh
. scripts/env.sh
cargo build --release -q -p meridian-trainer --bin meridian
bin=${MERIDIAN_BIN:-target/release/meridian}

# One seed's runs, one after the other. The demo's GPT (d128 x 2 layers, 0.48M
# parameters), windows of 128 bytes, 8 windows per step per worker, 300 inner steps; H = 30
# for DiLoCo and Streaming DiLoCo; SparseLoCo with the demo's settings (H = 10, top-32 of
# 4096, 1-bit values, from scripts/frontier.py).
one_seed() {
  local seed=$1 dir=$out/seed-$1
  local common=(--model gpt --set model.d_model=128 --set model.layers=2 --set model.heads=2
                --set model.context=128 --steps 300 --inner-steps 30 --seed "$seed" --threads 1
                --checkpoint-every 0 --overwrite)
  local sl=(--set sparseloco.inner_steps=10 --set sparseloco.topk=32 --set sparseloco.value_bits=1)
  run() { local name=$1; shift; "$bin" train "${common[@]}" --out "$dir/$name" "$@" > "$dir/$name.log" 2>&1; }
  mkdir -p "$dir"
  run main --workers 4 --algo ddp,diloco,sparseloco,demo,streaming "${sl[@]}"
  run diloco-h10 --workers 4 --algo diloco --set diloco.inner_steps=10
  run diloco-int8 --workers 4 --algo diloco --set diloco.transport=int8
  run sparseloco-no-ef --workers 4 --algo sparseloco "${sl[@]}" --set sparseloco.error_feedback=false
  run single-worker --workers 1 --algo ddp,diloco
  echo "seed $seed done" >&2
}
export -f one_seed
export out bin
# shellcheck disable=SC2086
printf '%s\n' $seeds | xargs -P "$jobs" -I{} bash -c 'set -euo pipefail; one_seed {}'
python3 papers/reproduce_table.py "$out"
