"""scripts/frontier.py, the bytes/loss frontier search: its grid, how it reads a run's
summary, and which runs it marks as on the frontier or meeting the target."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "frontier.py"


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("frontier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["frontier"] = module
    spec.loader.exec_module(module)
    return module


def test_every_grid_point_has_its_own_folder_and_settings_of_its_algorithm(frontier):
    points = frontier.grid()
    names = [p.name for p in points]
    assert len(set(names)) == len(names), names
    assert sum(p.algo == "ddp" for p in points) == 1, "one DDP reference"
    for p in points:
        assert all(s.startswith(p.algo + ".") for s in p.sets), p
    # Every algorithm the demo compares is searched.
    assert {p.algo for p in points} >= {"ddp", "diloco", "sparseloco", "demo", "streaming"}


def test_the_command_trains_the_demos_run_with_the_points_settings(frontier, tmp_path):
    p = frontier.Point("sparseloco", 10, ("sparseloco.topk=32",))
    cmd = frontier.command("meridian", p, tmp_path / p.name, seed=2, steps=300)
    joined = " ".join(cmd)
    assert "--algo sparseloco" in joined and "--inner-steps 10" in joined
    assert "--seed 2" in joined and "--steps 300" in joined and "--workers 4" in joined
    for s in frontier.DEMO_MODEL + ["sparseloco.topk=32"]:
        assert f"--set {s}" in joined
    # DDP and DeMo sync every step: no H.
    assert "--inner-steps" not in frontier.command("meridian", frontier.Point("ddp", 1), tmp_path, 0, 300)


def summary(tmp_path: Path, name: str, val: float, sent: float, received: float, identical=True) -> Path:
    """A summary.json with the fields `meridian train` writes and the script reads."""
    ratio = 861.7e6 / (sent + received)
    d = {
        "algorithms": [
            {
                "algorithm": name,
                "final_val_loss": val,
                "bytes_sent_per_worker": sent,
                "bytes_received_per_worker": received,
                "frontier": {"bytes_per_worker": sent + received, "fewer_bytes_than_ddp_bf16": ratio},
                "rounds": 30,
                "wall_seconds": 1.0,
                "replicas_identical": identical,
            }
        ]
    }
    path = tmp_path / f"{name}-{val}.json"
    path.write_text(json.dumps(d))
    return path


def test_a_run_whose_replicas_diverged_is_not_a_result(frontier, tmp_path):
    p = frontier.Point("diloco", 30)
    ok = frontier.read_result(p, summary(tmp_path, "diloco", 2.4, 1e6, 3e6))
    assert (ok.val, ok.total) == (2.4, 4e6)
    with pytest.raises(RuntimeError, match="replicas diverged"):
        frontier.read_result(p, summary(tmp_path, "diloco", 2.5, 1e6, 3e6, identical=False))


def result(frontier, algo, h, val, total):
    r = frontier.Result(frontier.Point(algo, h), val, total / 4, 3 * total / 4, 861.7e6 / total, 10, 1.0)
    return r


def test_the_frontier_is_per_algorithm_and_drops_dominated_runs(frontier):
    a = result(frontier, "sparseloco", 10, 2.38, 800e3)  # best loss
    b = result(frontier, "sparseloco", 15, 2.40, 600e3)  # fewer bytes: also on it
    c = result(frontier, "sparseloco", 30, 2.42, 700e3)  # beaten by b on both
    d = result(frontier, "diloco", 30, 2.50, 10e6)  # beaten by a on both, but another algorithm
    runs = [a, b, c, d]
    frontier.mark_frontier(runs)
    assert [r.on_frontier for r in runs] == [True, True, False, True]


def test_the_table_marks_the_target_only_with_both_bytes_and_loss(frontier):
    ddp = result(frontier, "ddp", 1, 2.3225, 2.3e9)
    hit = result(frontier, "sparseloco", 10, 2.38, 700e3)  # 1231x, +2.5 %
    lossy = result(frontier, "sparseloco", 30, 2.45, 500e3)  # 1723x, +5.5 %
    heavy = result(frontier, "sparseloco", 5, 2.33, 1.5e6)  # 574x, +0.3 %
    runs = [ddp, hit, lossy, heavy]
    for r in runs:
        r.vs_ddp = r.val / ddp.val - 1.0
    frontier.mark_frontier(runs)
    rows = {line.split("|")[2].strip(): line for line in frontier.table(runs, ddp.val).splitlines()[2:]}
    assert "**met**" in rows["H=10"]
    assert "**met**" not in rows["H=30"] and "**met**" not in rows["H=5"]
    assert "+2.48%" in rows["H=10"]
