"""What wrapping a PyTorch script with `meridian.Optimizer` costs, measured against the
script's own optimizer and against `meridian worker` on the same model, in one run.

1. Inner steps without an exchange: `opt.step()` against the inner AdamW's own `step()`
   on identical models and gradients, in alternating blocks (so drift in the machine's
   speed hits both alike); medians per step and their ratio (target: at most 1.02).
2. Exchange steps: one worker with H = 1 (every step exchanges), a Python loop over the
   eager model against `meridian worker` over the same model saved as TorchScript, each
   with its own loopback coordinator; wall time per step and the ratio (target: at most
   1.2). Both sides do the same work per step: a forward and backward pass on a batch of
   8 windows of 64 bytes, gradient clipping at 1.0, AdamW (DiLoCo's settings) and the
   round.

Usage: build the package and the binary optimized first (`make setup` builds the
package with cargo's dev profile, for the tests):
    MERIDIAN_PY_PROFILE=release bash scripts/setup-python.sh
    cargo build --release -p meridian-trainer --bin meridian
    .venv/bin/python benches/python/step_cost.py [--dim 256 --layers 4] [--algorithms diloco,demo]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
import meridian  # noqa: E402

BATCH, CONTEXT, VOCAB = 8, 64, 256


def load_example():
    spec = importlib.util.spec_from_file_location("export_torchscript", ROOT / "examples/export_torchscript.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(ex, dim, layers, seed=0):
    torch.manual_seed(seed)
    return ex.ForMeridian(ex.TinyGPT(VOCAB, CONTEXT, dim=dim, layers=layers), CONTEXT, VOCAB)


def adamw(model):
    # Meridian's inner AdamW defaults (trainer/src/step/adamw.rs): DiLoCo's settings.
    return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def batches(corpus: bytes, seed: int):
    g = torch.Generator().manual_seed(seed)
    data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).to(torch.int64)
    while True:
        starts = torch.randint(0, len(data) - CONTEXT - 1, (BATCH,), generator=g)
        window = torch.stack([data[s : s + CONTEXT + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def inner_overhead(ex, args, corpus):
    """Part 1: medians of inner.step() and of opt.step() (no exchange due), interleaved."""
    plain = build(ex, args.dim, args.layers)
    wrapped = build(ex, args.dim, args.layers)
    plain_opt = adamw(plain)
    coord = meridian.Coordinator(min_workers=1)
    opt = meridian.Optimizer(adamw(wrapped), wrapped, join=coord.join, name="bench",
                             algorithm="diloco", inner_steps=10**9)
    data = batches(corpus, 1)
    times = {"inner": [], "meridian": []}

    def one(model, step):
        tokens, targets = next(data)
        model(tokens, targets).backward()
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    one(wrapped, opt.step)  # joins the run
    opt.zero_grad()
    for block in range(args.blocks):
        for name, model, step, zero in (
            ("inner", plain, plain_opt.step, plain_opt.zero_grad),
            ("meridian", wrapped, opt.step, opt.zero_grad),
        ):
            for _ in range(args.block_steps):
                times[name].append(one(model, step))
                zero()
    opt.close()
    coord.close()
    a, b = statistics.median(times["inner"]), statistics.median(times["meridian"])
    return {"inner_ms": a * 1e3, "meridian_ms": b * 1e3, "ratio": b / a,
            "steps": len(times["inner"])}


def python_exchange(ex, args, corpus, algorithm):
    model = build(ex, args.dim, args.layers)
    inner = adamw(model)
    steps = args.exchange_steps
    sched = torch.optim.lr_scheduler.LambdaLR(inner, lambda s: 1.0)
    coord = meridian.Coordinator(min_workers=1)
    opt = meridian.Optimizer(inner, model, join=coord.join, name="py", algorithm=algorithm,
                             inner_steps=1, total_steps=steps)
    data = batches(corpus, 2)
    opt.worker_index  # joins before the clock starts, as `meridian worker` does
    start = time.perf_counter()
    for _ in range(steps):
        tokens, targets = next(data)
        model(tokens, targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    seconds = time.perf_counter() - start
    rounds = opt.stats["rounds"]
    opt.close()
    coord.close()
    return seconds / steps, rounds


def worker_exchange(ex, args, algorithm, tmp: Path):
    model = build(ex, args.dim, args.layers)
    path = tmp / "model.pt"
    torch.jit.script(model).save(str(path))
    binary = ROOT / "target/release/meridian"
    join_file = tmp / f"join-{algorithm}.txt"
    coord = subprocess.Popen(
        [str(binary), "coordinator", "--listen", "127.0.0.1:0", "--min-workers", "1",
         "--state-dir", str(tmp / f"state-{algorithm}"), "--join-file", str(join_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not join_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        env = dict(os.environ, MERIDIAN_JOIN=join_file.read_text().strip())
        out = tmp / f"worker-{algorithm}"
        subprocess.run(
            [str(binary), "worker", "--name", "rs", "--model", f"torchscript:{path}",
             "--algo", algorithm, "--inner-steps", "1", "--steps", str(args.exchange_steps),
             "--data", str(ROOT / "data/corpus.txt"), "--threads", str(torch.get_num_threads()),
             "--out", str(out)],
            env=env, check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        summary = json.loads((out / "worker.json").read_text())
        return summary["seconds"] / summary["steps"], summary["rounds"]
    finally:
        coord.kill()
        coord.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--block-steps", type=int, default=10)
    p.add_argument("--exchange-steps", type=int, default=60)
    p.add_argument("--algorithms", default="diloco,sparseloco,demo,ddp")
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ex = load_example()
    corpus = (ROOT / "data/corpus.txt").read_bytes()[: 4 << 20]
    n = sum(p.numel() for p in build(ex, args.dim, args.layers).parameters())
    print(f"model: TinyGPT dim {args.dim}, {args.layers} layers, {n / 1e6:.2f}M parameters; "
          f"batch {BATCH}x{CONTEXT}; torch threads {torch.get_num_threads()}")
    r = inner_overhead(ex, args, corpus)
    print(f"inner step, no exchange ({r['steps']} steps each, interleaved): "
          f"AdamW.step {r['inner_ms']:.3f} ms, meridian opt.step {r['meridian_ms']:.3f} ms, "
          f"ratio {r['ratio']:.4f} (target <= 1.02)")
    with tempfile.TemporaryDirectory() as d:
        for algorithm in args.algorithms.split(","):
            py, py_rounds = python_exchange(ex, args, corpus, algorithm)
            rs, rs_rounds = worker_exchange(ex, args, algorithm, Path(d))
            print(f"exchange every step, {algorithm}: python {py * 1e3:.2f} ms/step "
                  f"({py_rounds} rounds), meridian worker {rs * 1e3:.2f} ms/step ({rs_rounds} rounds), "
                  f"ratio {py / rs:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
