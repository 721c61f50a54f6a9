"""A run whose workers stop after N steps and resume from `state_dict()` ends bit-identical
to one that never stopped (the shared DiLoCo run of conftest.RUNS)."""

from conftest import RUN_INNER_STEPS, RUN_STEPS, run_args, run_to_end

# The stop falls inside round 2 (steps 8..11): the coordinator gives a run's first three
# rounds its initial (10-minute) deadline, so the round left open waits for the workers
# to come back; later rounds get the adaptive one (5 s at least). The run ends on a
# round's step (28), where every replica holds the same parameters.
N = 10
assert N // RUN_INNER_STEPS == 2 and N % RUN_INNER_STEPS != 0
assert RUN_STEPS % RUN_INNER_STEPS == 0
ROUNDS_BEFORE = N // RUN_INNER_STEPS
ROUNDS_AFTER = list(range(ROUNDS_BEFORE, RUN_STEPS // RUN_INNER_STEPS))
NAMES = ("w0", "w1")
ARGS = run_args("diloco")


def stop_halfway(coord, spawn, tmp_path):
    """Both workers train N steps, save their state_dict and leave: the files, and the
    member id of each name."""
    saves = {n: tmp_path / f"{n}.pt" for n in NAMES}
    first = run_to_end([
        spawn(coord.join, n, *ARGS, "--stop-after", str(N), "--save", str(saves[n]),
              tag=f"first-{n}")
        for n in NAMES
    ])
    assert all(r["stats"]["steps"] == N for r in first)
    assert all(r["stats"]["rounds"] == ROUNDS_BEFORE for r in first)
    return saves, {r["name"]: r["worker_index"] for r in first}


def check_resumed(second, members, uninterrupted):
    for r in second:
        # Each went on from its saved step, as the same member, through the last rounds.
        assert r["losses"][0][0] == N, r["losses"][:2]
        assert r["stats"]["steps"] == RUN_STEPS
        assert [x["round"] for x in r["rounds"]] == ROUNDS_AFTER, r["rounds"]
        assert r["worker_index"] == members[r["name"]]
        # Nobody missed a round: both payloads are in every one.
        missed = [x["round"] for x in r["rounds"] if x["applied"] != [0, 1]]
        assert not missed, f"{r['name']} went without a payload in rounds {missed}: {r['rounds']}"
    # Members are numbered in join order, which may differ between the two runs; the data
    # follows the member, not the name, so the hashes of all workers are compared.
    expected = [x["hash"] for x in uninterrupted["rounds"][ROUNDS_BEFORE:]]
    for r in second:
        assert [x["hash"] for x in r["rounds"]] == expected, r["name"]
        assert r["final_hash"] == uninterrupted["final_hash"], r["name"]


def test_workers_resumed_from_state_dict_together_end_at_the_same_parameters(
    two_worker_run, coordinator, spawn, tmp_path
):
    uninterrupted = two_worker_run("diloco")[0]
    saves, members = stop_halfway(coordinator, spawn, tmp_path)
    # Restarted at once, as a launcher restarts a job: both rejoin before either steps.
    resumed = [
        spawn(coordinator.join, n, *ARGS, "--load", str(saves[n]), "--hold", tag=f"second-{n}")
        for n in NAMES
    ]
    for w in resumed:
        w.wait_for("JOINED", 1, timeout=60)
    for w in resumed:
        w.send("go")
    check_resumed(run_to_end(resumed), members, uninterrupted)


def test_a_worker_resumed_after_its_peer_delivered_the_open_round_still_takes_part(
    two_worker_run, coordinator, spawn, tmp_path
):
    uninterrupted = two_worker_run("diloco")[0]
    saves, members = stop_halfway(coordinator, spawn, tmp_path)
    # One worker resumes first and delivers the open round (two steps after joining) while
    # the other is still starting: the latecomer rejoins a round whose other payload the
    # coordinator has relayed already, and must still apply it and take part in the next.
    early, late = sorted(NAMES, key=lambda n: members[n])
    first = spawn(coordinator.join, early, *ARGS, "--load", str(saves[early]), tag="second-early")
    first.wait_for("JOINED", 1, timeout=60)
    second = spawn(coordinator.join, late, *ARGS, "--load", str(saves[late]), tag="second-late")
    check_resumed(run_to_end([first, second]), members, uninterrupted)
