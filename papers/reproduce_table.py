#!/usr/bin/env python3
"""Turns the summaries written by papers/reproduce.sh into the tables of
papers/reproduction.md (Markdown on stdout): every run's validation loss over the seeds
(mean, and the lowest and highest), its bytes against a bf16 ring DDP, and the published
orderings checked seed by seed.

Usage: reproduce_table.py OUT (the folder holding seed-N/ for each seed)."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/reproduce")
seed_dirs = sorted(out.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
if not seed_dirs:
    sys.exit(f"{out}: no seed-N folders; run papers/reproduce.sh first")
RUNS = ["main", "diloco-h10", "diloco-int8", "sparseloco-no-ef", "single-worker"]


def load(seed_dir: Path, run: str) -> dict:
    return json.loads((seed_dir / run / "summary.json").read_text())


def label(run: str, a: dict) -> str:
    s = a["settings"]
    if run == "diloco-int8":
        return f"DiLoCo (H={s['inner_steps']}), int8 exchange (INTELLECT-1)"
    if run == "sparseloco-no-ef":
        return "SparseLoCo without error feedback"
    if run == "single-worker":
        return {"ddp": "1 worker: plain AdamW", "diloco": f"1 worker: DiLoCo (H={s.get('inner_steps')})"}[a["algorithm"]]
    return {
        "ddp": "DDP (f32 gradients every step)",
        "diloco": f"DiLoCo (H={s.get('inner_steps')}, f32)",
        "sparseloco": f"SparseLoCo (H={s.get('inner_steps')}, top-{s.get('topk')}/{s.get('chunk')}, {s.get('value_bits')}-bit)",
        "demo": f"DeMo (top-{s.get('topk')} of {s.get('chunk')}² DCT, every step)",
        "streaming": f"Streaming DiLoCo (H={s.get('inner_steps')}, F={s.get('fragments')}, {s.get('value_bits')}-bit)",
    }[a["algorithm"]]


# (run, algorithm) -> per-seed algorithm summaries, in seed order.
results: dict[tuple[str, str], list[dict]] = {}
order: list[tuple[str, str]] = []
seeds = []
for d in seed_dirs:
    seeds.append(int(d.name.split("-")[1]))
    for run in RUNS:
        s = load(d, run)
        for a in s["algorithms"]:
            a = dict(a, workers=s["workers"], ring=s["ddp_bf16_ring"])
            key = (run, a["algorithm"])
            if key not in results:
                order.append(key)
            results.setdefault(key, []).append(a)
missing = [k for k, v in results.items() if len(v) != len(seeds)]
if missing:
    sys.exit(f"runs missing for some seeds: {missing}")

main = load(seed_dirs[0], "main")
print(
    f"Model: {main['model']} ({main['parameters']:,} parameters); data: {main['data']['source']} "
    f"({main['data']['train_tokens']:,} training / {main['data']['val_tokens']:,} validation bytes); "
    f"{main['steps']} inner steps × {main['batch']} windows × {main['context']} tokens per worker; "
    f"seeds {', '.join(map(str, seeds))}; inner AdamW lr {main['inner']['lr']} (warmup 5 %, cosine to 10 %).\n"
)


def val(key):
    return [a["final_val_loss"] for a in results[key]]


ddp = val(("main", "ddp"))
cols = " | ".join(f"seed {s}" for s in seeds)
print(f"| run | workers | {cols} | mean | vs DDP (mean) | sent + received per worker | x fewer than bf16 ring DDP | rounds |")
print("|---|---|" + "---|" * len(seeds) + "---|---|---|---|---|")
for key in order:
    run, algo = key
    a0 = results[key][0]
    v = val(key)
    alone = a0["workers"] == 1
    rel = [x / d - 1 for x, d in zip(v, ddp)]
    total = a0["bytes_sent_per_worker"] + a0["bytes_received_per_worker"]
    ring = a0["ring"]["bytes_sent_per_worker"] + a0["ring"]["bytes_received_per_worker"]
    size = "— (alone)" if alone else (f"{total / 1e6:,.2f} MB" if total >= 1e6 else f"{total / 1e3:,.1f} kB")
    fewer = "—" if alone or total == 0 else f"{ring / total:,.0f}x" if ring / total >= 10 else f"{ring / total:.2f}x"
    vs = "—" if alone else f"{100 * statistics.mean(rel):+.2f}%"
    per_seed = " | ".join(f"{x:.4f}" for x in v)
    print(f"| {label(run, a0)} | {a0['workers']} | {per_seed} | {statistics.mean(v):.4f} | {vs} | {size} | {fewer} | {a0['rounds']} |")


def rel_to_ddp(key):
    return [x / d - 1 for x, d in zip(val(key), ddp)]


def fewer(key):
    a = results[key][0]
    ring = a["ring"]["bytes_sent_per_worker"] + a["ring"]["bytes_received_per_worker"]
    return ring / (a["bytes_sent_per_worker"] + a["bytes_received_per_worker"])


def pct(xs):
    return " / ".join(f"{100 * x:+.2f}%" for x in xs)


def verdict(flags):
    return "holds" if all(flags) else ("misses" if not any(flags) else f"holds on {sum(flags)} of {len(flags)} seeds")


print("\n| published ordering | here, per seed | |\n|---|---|---|")
for h_key in [("main", "diloco"), ("diloco-h10", "diloco")]:
    r = rel_to_ddp(h_key)
    h = results[h_key][0]["settings"]["inner_steps"]
    print(f"| DiLoCo within 2 % of DDP at equal tokens (H = {h}, {results[h_key][0]['rounds']} rounds) | {pct(r)} | {verdict([x <= 0.02 for x in r])} |")
sl = ("main", "sparseloco")
r = rel_to_ddp(sl)
print(
    f"| SparseLoCo within 3 % of DDP at ≥ 1000× fewer bytes than bf16 ring DDP | {pct(r)} at {fewer(sl):,.0f}× "
    f"| {verdict([x <= 0.03 and fewer(sl) >= 1000 for x in r])} |"
)
ef, noef = val(sl), val(("sparseloco-no-ef", "sparseloco"))
print(
    "| Error feedback matters (SparseLoCo without it is worse) | "
    + " / ".join(f"{b:.3f} vs {a:.3f}" for a, b in zip(ef, noef))
    + f" | {verdict([b > a for a, b in zip(ef, noef)])} |"
)
f32, i8 = val(("main", "diloco")), val(("diloco-int8", "diloco"))
d = [b / a - 1 for a, b in zip(f32, i8)]
print(f"| int8 pseudo-gradients cost nothing (INTELLECT-1; within 0.5 %) | int8 vs f32: {pct(d)} | {verdict([abs(x) <= 0.005 for x in d])} |")
one_adamw, one_diloco = val(("single-worker", "ddp")), val(("single-worker", "diloco"))
print(
    "| One-worker DiLoCo at least matches plain AdamW | "
    + " / ".join(f"{b:.3f} vs {a:.3f}" for a, b in zip(one_adamw, one_diloco))
    + f" | {verdict([b <= a for a, b in zip(one_adamw, one_diloco)])} |"
)
demo = rel_to_ddp(("main", "demo"))
print(f"| DeMo at or below data parallel's loss (DisTrO 1.2B) | {pct(demo)} | {verdict([x <= 0 for x in demo])} |")
