#!/usr/bin/env python3
"""Turns the summaries written by papers/reproduce.sh into the tables of
papers/reproduction.md (Markdown on stdout).

Usage: reproduce_table.py OUT [OTHER_SEED_OUT ...]: each further folder holds a rerun with
another seed (SEED=1 bash papers/reproduce.sh OUT1); its validation losses are added as
columns where it has the same run."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/reproduce")
others = [Path(p) for p in sys.argv[2:]]


def other_loss(other, run, algorithm):
    try:
        s = json.loads((other / run / "summary.json").read_text())
    except FileNotFoundError:
        return None, None
    for a in s["algorithms"]:
        if a["algorithm"] == algorithm:
            return a["final_val_loss"], s["seed"]
    return None, s["seed"]


def load(name):
    return json.loads((out / name / "summary.json").read_text())


def label(run, a):
    s = a["settings"]
    if run == "diloco-int8":
        return "DiLoCo, int8 exchange (INTELLECT-1)"
    if run == "sparseloco-no-ef":
        return "SparseLoCo without error feedback"
    if run == "single-worker":
        return {"ddp": "1 worker: plain AdamW", "diloco": "1 worker: DiLoCo"}[a["algorithm"]]
    return {
        "ddp": "DDP (fp32 all-reduce every step)",
        "diloco": f"DiLoCo (H={s.get('inner_steps')}, fp32)",
        "sparseloco": f"SparseLoCo (H={s.get('inner_steps')}, top-{s.get('topk')}/{s.get('chunk')}, {s.get('value_bits')}-bit)",
        "demo": f"DeMo (top-{s.get('topk')} of {s.get('chunk')}² DCT, every step)",
        "streaming": f"Streaming DiLoCo (H={s.get('inner_steps')}, F={s.get('fragments')}, {s.get('value_bits')}-bit)",
    }[a["algorithm"]]


rows = []
for run in ["main", "diloco-int8", "sparseloco-no-ef", "single-worker"]:
    try:
        s = load(run)
    except FileNotFoundError:
        continue
    for a in s["algorithms"]:
        rows.append((run, s, a))

main = load("main")
diloco = next(a for r, _, a in rows if r == "main" and a["algorithm"] == "diloco")
ddp = next(a for r, _, a in rows if r == "main" and a["algorithm"] == "ddp")
print(f"Model: {main['model']} ({main['parameters']:,} parameters); data: {main['data']['source']} "
      f"({main['data']['train_tokens']:,} training / {main['data']['val_tokens']:,} validation bytes); "
      f"{main['steps']} inner steps × {main['batch']} windows × {main['context']} tokens per worker; seed {main['seed']}; "
      f"inner AdamW lr {main['inner']['lr']} (warmup 5 %, cosine to 10 %).\n")
seeds = [other_loss(o, "main", "ddp")[1] for o in others]
extra = "".join(f" val loss, seed {sd} |" for sd in seeds)
print(f"| run | workers | val loss |{extra} train loss | MB sent / worker | DDP's bytes ÷ these | DiLoCo's ÷ these | rounds |")
print("|---|---|---|" + "---|" * len(others) + "---|---|---|---|---|")


def ratio(ref, b):
    r = ref["bytes_sent_per_worker"] / b
    return f"{r:,.0f}" if r >= 1 else f"{r:.2f}"


for run, s, a in rows:
    b = a["bytes_sent_per_worker"]
    alone = s["workers"] == 1
    mb = "— (alone)" if alone else f"{b / 1e6:,.3f}"
    vs_ddp = "—" if alone or b == 0 else ratio(ddp, b)
    vs_diloco = "—" if alone or b == 0 else ratio(diloco, b)
    cols = ""
    for o in others:
        loss, _ = other_loss(o, run, a["algorithm"])
        cols += f" {loss:.4f} |" if loss is not None else " — |"
    print(f"| {label(run, a)} | {s['workers']} | {a['final_val_loss']:.4f} |{cols} {a['final_train_loss']:.4f} "
          f"| {mb} | {vs_ddp} | {vs_diloco} | {a['rounds']} |")
print("\nValidation loss is the byte-level cross-entropy in nats on the same held-out windows, "
      "after the last step, with worker 0's parameters; training loss is the mean over workers of "
      "the last 5 % of steps. Bytes are the exact encoded payloads each worker sent. A single "
      "worker has nobody to send to, so its bytes are not counted.")
