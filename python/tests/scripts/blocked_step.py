"""A worker whose step cannot complete, with a second Python thread counting meanwhile.
Once the counter has advanced during the wait, a timer thread delivers SIGINT to the main
thread, as Ctrl-C would. Two waits are tried in turn:

- exchange: the run needs two workers and this one is alone, so its first exchange waits;
- join: the coordinator is gone, so joining retries until a (long) connect timeout.

Prints one JSON object per wait: what the step raised, how far the counter got while the
step was blocked, whether the worker had joined. The suite runs it as a subprocess, so a
step that never returns fails that test instead of hanging the suite.
"""

import json
import signal
import sys
import threading
import time

import torch

import meridian

COUNT_BEFORE_INTERRUPT = 200


def blocked_step(join: str) -> dict:
    """Steps a fresh worker of the run at `join` while a thread counts, interrupting the
    step once the count is reached."""
    counter = 0
    in_step = threading.Event()
    counted = threading.Event()
    stop = threading.Event()

    def count():
        nonlocal counter
        in_step.wait()
        # This loop runs only while the main thread has released the GIL.
        while not stop.is_set():
            counter += 1
            if counter == COUNT_BEFORE_INTERRUPT:
                counted.set()
            time.sleep(0.001)

    def interrupt():
        counted.wait()
        if not stop.is_set():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = meridian.Optimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, join=join, name="alone",
        algorithm="ddp", connect_timeout=120,
    )
    threads = [threading.Thread(target=f, daemon=True) for f in (count, interrupt)]
    for t in threads:
        t.start()
    model(torch.ones(2, 4)).sum().backward()
    result = {}
    in_step.set()
    try:
        opt.step()  # DDP exchanges at once
        result["raised"] = None
    except KeyboardInterrupt:
        result["raised"] = "KeyboardInterrupt"
    except BaseException as e:  # noqa: BLE001 - reported to the test
        result["raised"] = f"{type(e).__name__}: {e}"
    stop.set()
    counted.set()  # lets the interrupter end if the step returned early
    result["count_during_wait"] = counter
    result["joined"] = opt._native.joined
    opt.close()
    return result


def main() -> int:
    torch.set_num_threads(1)
    results = {}
    with meridian.Coordinator(listen="127.0.0.1:0", min_workers=2) as coord:
        results["exchange"] = blocked_step(coord.join)
    gone = meridian.Coordinator(listen="127.0.0.1:0", min_workers=1)
    gone.close()
    results["join"] = blocked_step(gone.join)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
