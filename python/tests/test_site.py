"""Torchrun sites: two sites of two ranks each (gloo on CPU, DDP or FSDP2 within each
site) train as two Meridian workers. Each site's rank 0 talks to the run; every rank of
both sites holds the same parameters after every round. A site's outer state is split
across its ranks where the algorithm allows, and the run cannot tell: a sharded site and
a plain worker hold the same parameters after every round."""

import json
import signal
import sys

import pytest

from conftest import (
    SCRIPTS, TRAIN_WORKER, assert_same_rounds, free_port, mean_loss, rounds_by_number, run_to_end,
)

STEPS, INNER_STEPS, RANKS = 20, 5, 2


def site_argv(out, algorithm: str, steps: int, inner_steps: int, *extra: str):
    """A torchrun site of RANKS ranks running train_worker.py (rank R writes OUT.rankR)."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(RANKS), "--master_port", str(free_port()),
        str(TRAIN_WORKER), "--site", "--algorithm", algorithm, *extra,
        "--steps", str(steps), "--inner-steps", str(inner_steps), "--out", str(out),
    ]


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
        extra = ["--fsdp2"] if engine == "fsdp2" else []
        argv = site_argv(out, algorithm, STEPS, INNER_STEPS, *extra)
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
    assert_outer_state_split(ranks, sharded=algorithm != "ddp")


def assert_outer_state_split(ranks, sharded: bool) -> None:
    """Each rank's outer algorithm covers its own part of the model (the parts add up to
    the whole) when the site is sharded, the whole model on every rank otherwise."""
    for name in {r["name"].split(" rank")[0] for r in ranks}:
        site = [r["stats"]["outer_elements"] for r in ranks if r["name"].startswith(name)]
        whole = PARAMS
        if sharded:
            assert sum(site) == whole and all(0 < e < whole for e in site), (name, site)
        else:
            assert site == [whole] * len(site), (name, site)


# The test model's parameter count (train_worker.py's Net with --hidden 16: 8→16→1).
PARAMS = 8 * 16 + 16 + 16 * 1 + 1


@pytest.mark.parametrize("algorithm", ["sparseloco", "demo", "streaming"])
def test_a_sharded_site_and_a_plain_worker_hold_the_same_model(
    coordinator, spawn, tmp_path, algorithm
):
    # Streaming DiLoCo: two fragments (one exchange every 2-3 steps), merged a step late.
    sets = ["--set", "fragments=2", "--set", "overlap=1"] if algorithm == "streaming" else []
    out = tmp_path / "site.json"
    site = spawn(coordinator.join, "site",
                 argv=site_argv(out, algorithm, STEPS, INNER_STEPS, *sets))
    plain = spawn(coordinator.join, "plain", "--algorithm", algorithm, "--steps", str(STEPS),
                  "--inner-steps", str(INNER_STEPS), *sets)
    results = run_to_end([site, plain], timeout=180)
    ranks = []
    for rank in range(RANKS):
        r = json.loads((tmp_path / f"site.json.rank{rank}").read_text())
        r["name"] = f"site rank {rank}"
        ranks.append(r)
    plain_result = dict(results[1], name="plain")
    rounds = {"demo": STEPS, "streaming": 2 * STEPS // INNER_STEPS}.get(algorithm, STEPS // INNER_STEPS)
    # Every round hash is the whole model's: the site's ranks agree with the plain worker.
    assert_same_rounds(ranks + [plain_result], rounds)
    assert_outer_state_split(ranks, sharded=True)
    assert plain_result["stats"]["outer_elements"] == PARAMS




@pytest.mark.parametrize("site_is", ["survivor", "victim"])
def test_a_sharded_site_serves_and_takes_a_whole_state(
    coordinator_factory, spawn, tmp_path, site_is
):
    """A plain worker killed and restarted takes the sharded site's state (the ranks'
    parts merged into the whole); a killed and restarted sharded site takes a plain
    worker's state (each rank its part). Either way everyone ends with the same model."""
    steps, inner, rounds = 30, 5, 6
    # The round the victim dies in waits for it: a restarted torchrun job takes a few
    # seconds to come back, and the survivor must still be there to give it a state.
    coord = coordinator_factory(min_workers=2, deadline_ms=60000)

    # Paced, so that the victim is still training when it is killed.
    pace = ("--step-seconds", "0.1")

    def start(name, tag):
        if name == site_is:
            out = tmp_path / f"{tag}.json"
            argv = site_argv(out, "diloco", steps, inner, *pace)
            return spawn(coord.join, name, tag=tag, argv=argv)
        return spawn(coord.join, name, "--algorithm", "diloco", "--steps", str(steps),
                     "--inner-steps", str(inner), *pace, tag=tag)

    survivor = start("survivor", "survivor")
    victim = start("victim", "victim-first")
    victim.wait_for("ROUND", 2, timeout=150)
    victim.kill(signal.SIGKILL)
    assert not list(tmp_path.glob("victim-first.json*")), "the victim finished before it was killed"
    restarted = start("victim", "victim-restarted")
    results = run_to_end([survivor, restarted], timeout=180)

    def ranks_of(tag, result):
        if tag.split("-")[0] != site_is:
            return [dict(result, name=tag)]
        return [
            dict(json.loads((tmp_path / f"{tag}.json.rank{r}").read_text()), name=f"{tag} {r}")
            for r in range(RANKS)
        ]

    everyone = ranks_of("survivor", results[0]) + ranks_of("victim-restarted", results[1])
    finals = {r["name"]: r["final_hash"] for r in everyone}
    assert len(set(finals.values())) == 1, finals
    for r in ranks_of("victim-restarted", results[1]):
        assert r["stats"]["states_taken"] == 1, (r["name"], r["stats"])
        assert r["stats"]["rounds"] < rounds, (r["name"], r["stats"])
        assert r["stats"]["steps"] == steps
    # After every round both applied, both held the same model.
    by_round = [rounds_by_number(r) for r in everyone]
    common = set.intersection(*(set(b) for b in by_round))
    assert common and max(common) == rounds - 1, [sorted(b) for b in by_round]
    for n in common:
        hashes = {r["name"]: b[n]["hash"] for r, b in zip(everyone, by_round)}
        assert len(set(hashes.values())) == 1, (n, hashes)


def test_an_fsdp2_ranks_state_dict_holds_its_inner_optimizer_shard(coordinator_factory, spawn):
    """Meridian's own state leaves a sharded inner optimizer out (no peer could use a
    rank's shard), but the rank's state_dict() carries it, so a resume restores the
    moments too."""
    argv = [sys.executable, str(SCRIPTS / "fsdp2_state.py")]
    w = spawn(coordinator_factory(min_workers=1).join, "fsdp2", argv=argv)
    w.wait_for("SAME", 1, timeout=120)
    w.finish(timeout=60)


def test_a_site_whose_model_differs_is_refused_on_every_rank(coordinator, spawn, tmp_path):
    """The run's first worker trains a 16-wide model; a site of an 8-wide one is refused.
    Its leader alone talks to the coordinator, yet every rank fails with the reason
    (naming the parameter), none waits for a welcome that never comes."""
    first = spawn(coordinator.join, "first", "--steps", str(STEPS), "--hold")
    first.wait_for("JOINED", 1, timeout=60)
    out = tmp_path / "narrow.json"
    site = spawn(coordinator.join, "narrow",
                 argv=site_argv(out, "diloco", STEPS, INNER_STEPS, "--hidden", "8"))
    site.wait(120)
    assert site.proc.returncode != 0, site.describe()
    log = site.stderr()
    for rank in range(RANKS):
        failed = [line for line in log.splitlines()
                  if line.startswith(f"[rank{rank}]") and "MeridianError" in line]
        assert failed, f"rank {rank} did not fail with the reason:\n{log[-4000:]}"
    assert "hidden.weight" in log and "refused" in log, log[-4000:]
    first.kill()
