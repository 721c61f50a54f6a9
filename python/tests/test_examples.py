"""The Python examples (examples/python/) run end to end, as their README runs them.

Each test starts a coordinator in this process, writes its join string to a file only its
owner can read, and runs the example as two workers (or two torchrun sites of two ranks)
for a few steps in subprocesses that find the run through MERIDIAN_JOIN_FILE or
MERIDIAN_JOIN. Each example writes its loss curve, stats and final consensus hash to
--out; the workers must exit cleanly and end on the same hash, the one of the last round
they applied.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import meridian

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "python"
CORPUS = ROOT / "data" / "corpus.txt"
# Seconds an example may take before it counts as hung (it needs a fraction of this).
TIMEOUT = 120


@pytest.fixture(autouse=True)
def _corpus():
    # `make setup` provides it; without it every example would fail the same way.
    assert CORPUS.exists(), f"{CORPUS} is missing: run `make setup` (scripts/setup-corpus.sh)"


def worker_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    # Two cores run every process of a test: one thread each keeps them from thrashing.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def write_join(coord: meridian.Coordinator, folder: Path) -> Path:
    path = folder / "join.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(coord.join)
    return path


def run_all(commands: list, env: dict, folder: Path) -> None:
    """Runs `commands` at once; fails, with their output, if one hangs or exits non-zero."""
    procs, logs = [], [folder / f"proc{i}.log" for i in range(len(commands))]
    failures = []
    deadline = time.monotonic() + TIMEOUT
    try:
        for cmd, log in zip(commands, logs):
            with open(log, "wb") as f:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        for i, p in enumerate(procs):
            try:
                rc = p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                rc = "hung"
            if rc != 0:
                failures.append((i, rc))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)  # the whole session: torchrun's ranks too
                p.wait(timeout=30)
    if failures:
        pytest.fail("\n".join(
            f"--- {' '.join(map(str, commands[i]))}: exit {rc}\n"
            + logs[i].read_text(errors="replace")[-4000:]
            for i, rc in failures
        ))


def load(paths: list) -> list:
    return [json.loads(p.read_text()) for p in paths]


def assert_one_run(results: list, steps: int, rounds: int) -> None:
    """Two workers of one run: distinct members, the same final replica, all rounds."""
    assert sorted(r["worker_index"] for r in results) == [0, 1]
    assert all(r["num_workers"] == 2 for r in results)
    for r in results:
        assert r["stats"]["steps"] == steps, r["stats"]
        assert r["stats"]["rounds"] == rounds, r["stats"]
        assert r["stats"]["bytes_sent"] > 0 and r["stats"]["bytes_received"] > 0
        assert r["last_round"]["round"] == rounds - 1
        # The parameters at the end are those of the last round every worker applied.
        assert r["hash"] == r["last_round"]["hash"]
        assert all(math.isfinite(loss) for _, loss in r["loss"])
    assert results[0]["hash"] == results[1]["hash"]


def test_plain_loop(tmp_path):
    steps, inner = 20, 5
    outs = [tmp_path / f"w{i}.json" for i in range(2)]
    with meridian.Coordinator(listen="127.0.0.1:0", min_workers=2) as coord:
        env = worker_env(MERIDIAN_JOIN_FILE=str(write_join(coord, tmp_path)))
        run_all([
            [sys.executable, str(EXAMPLES / "plain_loop.py"), "--name", f"w{i}",
             "--algorithm", "diloco", "--steps", str(steps), "--inner-steps", str(inner),
             "--threads", "1", "--out", str(outs[i])]
            for i in range(2)
        ], env, tmp_path)
    results = load(outs)
    assert_one_run(results, steps, steps // inner)
    assert len(results[0]["loss"]) == steps
    for r in results:
        assert r["val_loss_after"] < r["val_loss_before"], r
    # Same replica, same held-out batches: the same validation loss to the bit.
    assert results[0]["val_loss_after"] == results[1]["val_loss_after"]


def test_hf_trainer(tmp_path):
    steps, inner = 10, 5
    outs = [tmp_path / f"w{i}.json" for i in range(2)]
    with meridian.Coordinator(listen="127.0.0.1:0", min_workers=2) as coord:
        env = worker_env(MERIDIAN_JOIN=coord.join)
        run_all([
            [sys.executable, str(EXAMPLES / "hf_trainer.py"), "--name", f"w{i}",
             "--steps", str(steps), "--inner-steps", str(inner), "--warmup", "3",
             "--log-every", "1", "--threads", "1", "--out", str(outs[i])]
            for i in range(2)
        ], env, tmp_path)
    results = load(outs)
    assert_one_run(results, steps, steps // inner)
    for r in results:
        assert len(r["loss"]) == steps  # Trainer logged every step
        # The scheduler drove the inner AdamW through the shared param_groups: up during
        # warmup, then linearly down to 0 after the last step.
        lrs = [lr for _, lr in r["learning_rate"]]
        assert lrs[0] < lrs[2] and lrs[2] > lrs[-1] > 0, lrs
        assert r["inner_lr_last"] == 0.0


def test_torchrun_sites(tmp_path):
    steps, inner = 10, 5
    outs = [tmp_path / f"site{i}.json" for i in range(2)]
    with meridian.Coordinator(listen="127.0.0.1:0", min_workers=2) as coord:
        env = worker_env(MERIDIAN_JOIN_FILE=str(write_join(coord, tmp_path)))
        run_all([
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node", "2", str(EXAMPLES / "torchrun_site.py"),
             "--name", f"site{i}", "--steps", str(steps), "--inner-steps", str(inner),
             "--out", str(outs[i])]
            for i in range(2)
        ], env, tmp_path)
    results = load(outs)
    assert_one_run(results, steps, steps // inner)
    for r in results:
        assert r["ranks"] == 2
    # Every rank of every site holds the same parameters.
    assert {h for r in results for h in r["rank_hashes"]} == {results[0]["hash"]}
