#!/usr/bin/env bash
# Reruns the small-scale reproduction behind papers/reproduction.md: every outer algorithm
# on the same GPT, corpus, seed and token budget, plus the ablations the papers report.
# About 40 minutes on 2 cores. Usage: [SEED=N] bash papers/reproduce.sh [OUT_DIR] (default
# out/reproduce), then python3 papers/reproduce_table.py OUT_DIR [OTHER_SEED_DIRS...].
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/out/reproduce}
cd "$root"
bash scripts/setup.sh
. scripts/env.sh
cargo build --release -q -p meridian-trainer --bin meridian
bin=${MERIDIAN_BIN:-target/release/meridian}
# GPT d128 × 4 layers (0.88M parameters), windows of 128 bytes, 8 windows per step per
# worker, 600 inner steps: 614k tokens per worker. H = 30 for every algorithm with rounds.
common=(--model gpt --set model.d_model=128 --set model.layers=4 --set model.heads=2
        --set model.context=128 --steps 600 --inner-steps 30 --seed "${SEED:-0}"
        --eval-every 30 --checkpoint-every 0)
run() { local name=$1; shift; echo "== $name" >&2; "$bin" train "${common[@]}" --out "$out/$name" "$@"; }
run main --workers 4 --algo ddp,diloco,sparseloco,demo,streaming
run diloco-int8 --workers 4 --algo diloco --set diloco.transport=int8
run sparseloco-no-ef --workers 4 --algo sparseloco --set sparseloco.error_feedback=false
run single-worker --workers 1 --algo ddp,diloco
echo "done: python3 papers/reproduce_table.py $out" >&2
