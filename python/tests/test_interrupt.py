"""Waiting for the network releases the GIL, and Ctrl-C ends the wait with
KeyboardInterrupt (run in a subprocess: a wait that never ends fails this test, not the
suite)."""

import json
import sys

from conftest import SCRIPTS


def test_a_blocked_step_lets_other_threads_run_and_ctrl_c_interrupts_it(spawn):
    w = spawn("", "alone", argv=[sys.executable, str(SCRIPTS / "blocked_step.py")])
    w.finish(timeout=120)
    results = json.loads([line for line in w.lines if line.startswith("{")][-1])
    exchange, join = results["exchange"], results["join"]
    # The first exchange waited for a second worker (it had joined), ...
    assert exchange["joined"] is True, results
    # ... another thread ran meanwhile (only possible with the GIL released), ...
    assert exchange["count_during_wait"] >= 200, results
    # ... and the interrupt ended the wait as a KeyboardInterrupt, not a MeridianError.
    assert exchange["raised"] == "KeyboardInterrupt", results
    # The same holds while joining a coordinator that is not there.
    assert join["joined"] is False, results
    assert join["count_during_wait"] >= 200, results
    assert join["raised"] == "KeyboardInterrupt", results
