"""A worker process killed mid-run and restarted under the same name catches up from a
peer's state and ends with the same parameters as the worker that never stopped."""

import signal

from conftest import rounds_by_number, run_to_end

STEPS, INNER_STEPS = 40, 5
ROUNDS = STEPS // INNER_STEPS


def victim_member(victim) -> int:
    """The member id the worker printed when it joined."""
    joined = [line for line in victim.lines if line.startswith("JOINED")]
    return int(joined[0].split()[1])


def test_a_killed_worker_restarted_with_its_name_takes_a_peers_state_and_agrees(
    coordinator_factory, spawn
):
    # Both workers are needed for a round. The round the victim dies in waits for it up to
    # the deadline: long enough for a restarted process to rejoin (so the survivor does not
    # train on alone), short enough that the survivor is never blocked for good.
    coord = coordinator_factory(min_workers=2, deadline_ms=10000)
    args = ["--algorithm", "diloco", "--steps", str(STEPS), "--inner-steps", str(INNER_STEPS)]
    survivor = spawn(coord.join, "survivor", *args)
    victim = spawn(coord.join, "victim", *args, tag="victim-first")
    victim.wait_for("ROUND", 2, timeout=120)
    victim.kill(signal.SIGKILL)
    assert victim.proc.returncode == -signal.SIGKILL

    restarted = spawn(coord.join, "victim", *args, tag="victim-restarted")
    s, v = run_to_end([survivor, restarted])

    assert v["worker_index"] == victim_member(victim), "the name keeps its member id"
    # It continued from the survivor's state: its first step already stood far into the
    # run, it applied fewer rounds than the run had, and its steps add up to the run's.
    assert v["steps_after_first_step"] > 2 * INNER_STEPS, v["steps_after_first_step"]
    # The peer's state was taken when it joined, before its first forward pass: that pass
    # already ran on the restored parameters, at the restored step (a gradient of the
    # fresh model's parameters would otherwise have gone into its first step).
    assert v["losses"][0][0] >= 2 * INNER_STEPS, v["losses"][:2]
    assert v["stats"]["rounds"] < ROUNDS, v["stats"]
    assert v["stats"]["steps"] == STEPS == s["stats"]["steps"]
    # After every round both applied, both hold the same parameters; at the end too.
    mine, theirs = rounds_by_number(v), rounds_by_number(s)
    common = sorted(set(mine) & set(theirs))
    assert common and common[-1] == ROUNDS - 1, (sorted(mine), sorted(theirs))
    for n in common:
        assert mine[n]["hash"] == theirs[n]["hash"], f"round {n}: {mine[n]} vs {theirs[n]}"
    assert v["final_hash"] == s["final_hash"]
    assert sorted(theirs) == list(range(ROUNDS)), sorted(theirs)
