"""Torchrun sites: two sites of two ranks each (gloo on CPU, DDP or FSDP2 within each
site) train as two Meridian workers. Each site's rank 0 talks to the run; every rank of
both sites holds the same parameters after every round."""

import json
import sys

import pytest

from conftest import TRAIN_WORKER, assert_same_rounds, free_port, mean_loss, run_to_end

STEPS, INNER_STEPS, RANKS = 20, 5, 2


@pytest.mark.parametrize(
    "engine, algorithm",
    [("ddp", "diloco"), ("fsdp2", "diloco"), ("fsdp2", "ddp")],
)
def test_two_torchrun_sites_of_two_ranks_agree_after_every_round(
    coordinator, spawn, tmp_path, engine, algorithm
):
    sites = []
    for name in ("site-a", "site-b"):
        out = tmp_path / f"{name}.json"
        argv = [
            sys.executable, "-m", "torch.distributed.run",
            "--nproc_per_node", str(RANKS), "--master_port", str(free_port()),
            str(TRAIN_WORKER), "--site", "--algorithm", algorithm,
            *(["--fsdp2"] if engine == "fsdp2" else []),
            "--steps", str(STEPS), "--inner-steps", str(INNER_STEPS), "--out", str(out),
        ]
        sites.append(spawn(coordinator.join, name, argv=argv))
    run_to_end(sites, timeout=180)

    ranks = []
    for name in ("site-a", "site-b"):
        for rank in range(RANKS):
            r = json.loads((tmp_path / f"{name}.json.rank{rank}").read_text())
            r["name"] = f"{name} rank {rank}"
            ranks.append(r)
    # The two sites are the run's two workers; a site's ranks share its member id.
    members = {r["name"]: r["worker_index"] for r in ranks}
    assert sorted(members.values()) == [0, 0, 1, 1], members
    assert members["site-a rank 0"] == members["site-a rank 1"], members
    assert all(r["num_workers"] == 2 for r in ranks)
    assert_same_rounds(ranks, STEPS if algorithm == "ddp" else STEPS // INNER_STEPS)
    for r in ranks:
        assert all(x["applied"] == [0, 1] for x in r["rounds"]), (r["name"], r["rounds"])
        # Only a site's leader sends and receives.
        sent = r["stats"]["bytes_sent"]
        assert (sent > 0) if r["rank"] == 0 else (sent == 0), (r["name"], r["stats"])
    first, last = mean_loss(ranks, range(0, 5)), mean_loss(ranks, range(STEPS - 5, STEPS))
    assert last < 0.7 * first, f"the loss went from {first:.4f} to {last:.4f}"
