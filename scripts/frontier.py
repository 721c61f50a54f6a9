#!/usr/bin/env python3
"""The bytes/loss frontier of `make demo`'s training run: every outer algorithm over a small
grid of its settings (top-k, value bits, H, outer learning rate), on the demo's model, data,
seed and token budget, each run with `meridian train`; then, per algorithm, the runs that
no other run of it beats on both bytes and loss.

    python3 scripts/frontier.py [--out out/frontier] [--jobs N] [--seed S] [--only ALGOS]

About 30 minutes on 2 cores (one LibTorch thread per run, --jobs runs at a time). A run
whose summary.json is already in --out is not rerun, so an interrupted search continues.
Bytes are what each worker sent plus received; "x fewer" compares them with a bf16 ring
all-reduce DDP of the same run (computed, not trained); "vs DDP" compares the synchronized
model's final validation loss with the DDP run of the grid. Writes OUT/frontier.json and
OUT/frontier.md (the tables printed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# `make demo`'s training run: GPT d128 x 2 layers x 2 heads, context 128 (478,720
# parameters), 4 workers, 300 inner steps, seed 0, the inner AdamW defaults.
DEMO_MODEL = ["model.d_model=128", "model.layers=2", "model.heads=2", "model.context=128"]
DEMO_STEPS = 300
DEMO_WORKERS = 4

# The goal: at least this many times fewer bytes than bf16 ring DDP, with a final
# validation loss at most this much worse than DDP's.
TARGET_RATIO = 1000.0
TARGET_LOSS = 0.03


@dataclass(frozen=True)
class Point:
    """One run of the grid: an algorithm, its H and its other settings."""

    algo: str
    inner_steps: int
    sets: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        parts = [self.algo, f"H{self.inner_steps}"]
        parts += [s.split(".", 1)[-1].replace("=", "") for s in self.sets]
        return "-".join(p.replace(",", "_").replace("=", "") for p in parts)

    def label(self) -> str:
        own = [s.split(".", 1)[-1] for s in self.sets]
        head = [] if self.algo in ("ddp", "demo") else [f"H={self.inner_steps}"]
        return " ".join(head + own) or "defaults"


def grid() -> list[Point]:
    """The search: small enough for 30 minutes on 2 cores, wide enough to show each
    algorithm's trade of bytes for loss."""
    pts = [Point("ddp", 1)]
    for h in (10, 15, 30):
        for k in (16, 32, 64):
            pts.append(Point("sparseloco", h, (f"sparseloco.topk={k}",)))
    pts.append(Point("sparseloco", 10, ("sparseloco.topk=24",)))
    pts.append(Point("sparseloco", 10, ("sparseloco.topk=32", "sparseloco.value_bits=1")))
    # Templar's production outer rate, and an outer warmup.
    pts.append(Point("sparseloco", 10, ("sparseloco.topk=32", "sparseloco.outer_lr=0.9")))
    pts.append(Point("sparseloco", 10, ("sparseloco.topk=32", "sparseloco.outer_lr_schedule=warmup=3")))
    pts.append(Point("diloco", 10))
    pts.append(Point("diloco", 30))
    for h in (15, 30, 60):
        pts.append(Point("diloco", h, ("diloco.transport=int8",)))
    pts.append(Point("demo", 1))
    pts.append(Point("demo", 1, ("demo.topk=8",)))
    pts.append(Point("streaming", 30))
    return pts


@dataclass
class Result:
    point: Point
    val: float
    sent: float
    received: float
    ratio: float
    rounds: int
    seconds: float
    vs_ddp: float | None = None
    on_frontier: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.sent + self.received


def command(bin_path: str, p: Point, out: Path, seed: int, steps: int) -> list[str]:
    cmd = [bin_path, "train", "--algo", p.algo, "--steps", str(steps), "--workers", str(DEMO_WORKERS),
           "--seed", str(seed), "--threads", "1", "--checkpoint-every", "0", "--overwrite",
           "--out", str(out)]
    if p.algo not in ("ddp", "demo"):
        cmd += ["--inner-steps", str(p.inner_steps)]
    for s in DEMO_MODEL + list(p.sets):
        cmd += ["--set", s]
    return cmd


def read_result(p: Point, summary: Path) -> Result:
    d = json.loads(summary.read_text())
    (a,) = d["algorithms"]
    if not a.get("replicas_identical", False):
        raise RuntimeError(f"{p.name}: replicas diverged; its numbers are not a result")
    return Result(
        point=p,
        val=float(a["final_val_loss"]),
        sent=float(a["bytes_sent_per_worker"]),
        received=float(a["bytes_received_per_worker"]),
        ratio=float(a["frontier"]["fewer_bytes_than_ddp_bf16"]),
        rounds=int(a["rounds"]),
        seconds=float(a["wall_seconds"]),
    )


def run_one(bin_path: str, p: Point, out: Path, seed: int, steps: int) -> Result:
    dest = out / p.name
    summary = dest / "summary.json"
    if not summary.exists():
        log = out / f"{p.name}.log"
        with open(log, "w") as f:
            rc = subprocess.run(command(bin_path, p, dest, seed, steps), stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0 or not summary.exists():
            raise RuntimeError(f"{p.name} failed (exit {rc}); see {log}")
    return read_result(p, summary)


def mark_frontier(results: list[Result]) -> None:
    """Within each algorithm, a run is on the frontier when no other run of it moves at most
    as many bytes with at most its loss, and one of the two strictly less."""
    for r in results:
        r.on_frontier = not any(
            o is not r and o.point.algo == r.point.algo and o.total <= r.total and o.val <= r.val
            and (o.total < r.total or o.val < r.val)
            for o in results
        )


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2f}x"


def table(results: list[Result], ddp_val: float | None) -> str:
    lines = [
        "| algorithm | settings | rounds | sent + received per worker | x fewer than bf16 ring DDP "
        "| val loss | vs DDP | frontier | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {a: i for i, a in enumerate(["ddp", "sparseloco", "diloco", "demo", "streaming"])}
    for r in sorted(results, key=lambda r: (order.get(r.point.algo, 9), -r.ratio)):
        vs = "n/a" if r.vs_ddp is None else f"{100 * r.vs_ddp:+.2f}%"
        hit = r.vs_ddp is not None and r.ratio >= TARGET_RATIO and r.vs_ddp <= TARGET_LOSS
        lines.append(
            f"| {r.point.algo} | {r.point.label()} | {r.rounds} | {fmt_bytes(r.total)} | {fmt_ratio(r.ratio)} "
            f"| {r.val:.4f} | {vs} | {'yes' if r.on_frontier else ''} | {'**met**' if hit else ''} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "frontier", help="where runs and tables go")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (default: cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every run (default 0, the demo's)")
    ap.add_argument("--steps", type=int, default=DEMO_STEPS, help="inner steps per worker (default: the demo's 300)")
    ap.add_argument("--only", default="", help="comma-separated algorithms to search (ddp always runs)")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "meridian"), help="the meridian binary")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: at least one run must go at a time")
    if not Path(args.bin).exists():
        ap.error(f"{args.bin} does not exist: build it with `cargo build --release -p meridian-trainer`")
    only = {a for a in args.only.split(",") if a}
    known = {p.algo for p in grid()}
    if only - known:
        ap.error(f"--only {args.only}: unknown {sorted(only - known)}; the grid has {sorted(known)}")
    points = [p for p in grid() if not only or p.algo in only or p.algo == "ddp"]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results: list[Result] = []
    failed: list[str] = []
    print(f"{len(points)} runs, {args.jobs} at a time, into {args.out}", file=sys.stderr)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, args.bin, p, args.out, args.seed, args.steps): p for p in points}
        for fut in concurrent.futures.as_completed(futures):
            try:
                r = fut.result()
            except RuntimeError as e:
                failed.append(str(e))
                print(f"  failed: {e}", file=sys.stderr)
                continue
            results.append(r)
            print(f"  {r.point.name}: val {r.val:.4f}, {fmt_ratio(r.ratio)} ({time.monotonic() - start:.0f} s)", file=sys.stderr)
    ddp = next((r for r in results if r.point.algo == "ddp"), None)
    for r in results:
        r.vs_ddp = None if ddp is None else r.val / ddp.val - 1.0
    mark_frontier(results)
    text = table(results, ddp.val if ddp else None)
    met = [r for r in results if r.vs_ddp is not None and r.ratio >= TARGET_RATIO and r.vs_ddp <= TARGET_LOSS]
    verdict = (
        f"Target (>= {TARGET_RATIO:,.0f}x fewer bytes, <= {100 * TARGET_LOSS:.0f}% worse val loss than DDP): "
        + (", ".join(f"{r.point.algo} {r.point.label()}" for r in met) if met else "no run meets it")
    )
    print(text)
    print(verdict)
    (args.out / "frontier.md").write_text(text + "\n\n" + verdict + "\n")
    (args.out / "frontier.json").write_text(json.dumps({
        "seed": args.seed,
        "steps": args.steps,
        "ddp_val_loss": ddp.val if ddp else None,
        "runs": [
            {"algorithm": r.point.algo, "name": r.point.name, "inner_steps": r.point.inner_steps,
             "settings": list(r.point.sets), "val_loss": r.val, "vs_ddp": r.vs_ddp, "sent": r.sent,
             "received": r.received, "fewer_bytes_than_ddp_bf16": r.ratio, "rounds": r.rounds,
             "on_frontier": r.on_frontier}
            for r in results
        ],
        "failed": failed,
    }, indent=2) + "\n")
    print(f"{time.monotonic() - start:.0f} s; wrote {args.out / 'frontier.md'} and frontier.json", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
