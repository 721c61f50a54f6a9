"""Each outer algorithm, two worker processes on loopback: the loss falls and the workers
hold bit-identical parameters after every round."""

import pytest

from conftest import RUN_STEPS, RUNS, assert_same_rounds, mean_loss


@pytest.mark.parametrize("algorithm", list(RUNS))
def test_two_worker_processes_learn_and_agree_after_every_round(algorithm, two_worker_run):
    results = two_worker_run(algorithm)
    rounds = RUNS[algorithm].rounds

    assert sorted(r["worker_index"] for r in results) == [0, 1]
    assert all(r["num_workers"] == 2 for r in results)
    assert_same_rounds(results, rounds)
    for r in results:
        assert r["stats"]["steps"] == RUN_STEPS
        assert r["stats"]["rounds"] == rounds
        assert r["stats"]["straggled"] == 0 and r["stats"]["rejected"] == 0, r["stats"]
        assert r["stats"]["bytes_sent"] > 0 and r["stats"]["bytes_received"] > 0, r["stats"]
        assert all(x["applied"] == [0, 1] for x in r["rounds"]), r["rounds"]
    first = mean_loss(results, range(0, 5))
    last = mean_loss(results, range(RUN_STEPS - 5, RUN_STEPS))
    falls_to = RUNS[algorithm].falls_to
    assert last < falls_to * first, f"{algorithm}: the loss went from {first:.4f} to {last:.4f}"
