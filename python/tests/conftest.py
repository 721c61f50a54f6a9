"""Fixtures shared by the `meridian` package's tests: in-process coordinators, worker
subprocesses that can never outlive (or hang) a test, and a watchdog for in-process tests.

Worker processes run `tests/scripts/train_worker.py`, a small training script of the kind
a user writes; they join through MERIDIAN_JOIN, as a launcher would set it.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import meridian

SCRIPTS = Path(__file__).parent / "scripts"
TRAIN_WORKER = SCRIPTS / "train_worker.py"

# The longest any single test may take before the watchdog dumps every thread's stack and
# ends pytest: an in-process wait that never returns fails the run instead of blocking it.
WATCHDOG_SECONDS = 240


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


class Coordinators:
    """Starts in-process coordinators (``start(min_workers=2, ...)``) and closes them all."""

    def __init__(self):
        self.started: List[meridian.Coordinator] = []

    def __call__(self, **kwargs) -> meridian.Coordinator:
        kwargs.setdefault("listen", "127.0.0.1:0")
        c = meridian.Coordinator(**kwargs)
        self.started.append(c)
        return c

    def close(self) -> None:
        for c in self.started:
            c.close()


@pytest.fixture
def coordinator_factory():
    """Starts in-process coordinators (``factory(min_workers=2, ...)``), all closed at the
    end of the test."""
    factory = Coordinators()
    yield factory
    factory.close()


@pytest.fixture
def coordinator(coordinator_factory):
    """A coordinator on a free loopback port for a run of two workers."""
    return coordinator_factory(min_workers=2)


def free_port() -> int:
    """A TCP port nobody listens on right now (for torchrun's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> List[int]:
    """The processes ``pid`` started, and theirs, from /proc (children first)."""
    children: Dict[int, List[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Worker:
    """A worker subprocess. A thread collects its stdout line by line (``wait_for`` waits
    on it); its stderr goes to a file that failures print."""

    def __init__(self, argv: List[str], env: Dict[str, str], log: Path, out: Optional[Path]):
        self.log = log
        self.out = out
        self.lines: List[str] = []
        self._seen = threading.Condition()
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            # Its own process group: killing it takes any children (torchrun's ranks) too.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self.lines.append("")  # end of output
            self._seen.notify_all()

    def send(self, line: str) -> None:
        """Writes ``line`` to its stdin."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def describe(self) -> str:
        return (
            f"{' '.join(map(str, self.proc.args))}\nexit status {self.proc.returncode}\n"
            f"--- stdout ---\n{''.join(self.lines)}\n--- stderr ---\n{self.stderr()[-8000:]}"
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to its process group and every process it started (torchrun
        starts each rank in a session of its own), and reaps it."""
        if self.proc.poll() is None:
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=5)
        self._log_file.close()

    def wait_for(self, prefix: str, count: int, timeout: float) -> List[str]:
        """Waits until ``count`` stdout lines have started with ``prefix`` and returns
        them; fails (killing the worker) if it exits or ``timeout`` passes first."""

        def matching():
            return [line for line in self.lines if line.startswith(prefix)]

        def ready():
            return len(matching()) >= count or (self.lines and self.lines[-1] == "")

        with self._seen:
            self._seen.wait_for(ready, timeout=timeout)
            found = matching()
        if len(found) < count:
            self.kill()
            pytest.fail(f"not {count} {prefix!r} lines within {timeout} s:\n{self.describe()}")
        return found

    def wait(self, timeout: float) -> None:
        """Waits for it to exit (killing it after ``timeout``, which fails the test)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout} s, killed:\n{self.describe()}")
        self._reader.join(timeout=10)
        self._log_file.close()

    def finish(self, timeout: float) -> dict:
        """Waits for a successful exit (killing it after ``timeout``) and returns its JSON."""
        self.wait(timeout)
        if self.proc.returncode != 0:
            pytest.fail(f"failed:\n{self.describe()}")
        if self.out is None or not self.out.exists():
            return {}
        return json.loads(self.out.read_text())


def worker_env(join: str, name: str) -> Dict[str, str]:
    """A worker's environment: the run's join string and its name, as a launcher sets them."""
    env = dict(os.environ)
    env.update(MERIDIAN_JOIN=join, MERIDIAN_NAME=name, OMP_NUM_THREADS="1")
    # The package's own checkout comes first, whatever the current folder.
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


class Spawner:
    """Starts worker processes of `train_worker.py` (or of ``argv``):
    ``spawner(join, name, *args)`` returns a :class:`Worker` whose JSON lands in
    ``folder/<tag>.json``. ``close()`` kills every one still running."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.workers: List[Worker] = []

    def __call__(self, join: str, name: str, *args: str, tag: Optional[str] = None,
                 argv: Optional[List[str]] = None) -> Worker:
        tag = tag or name
        out = self.folder / f"{tag}.json"
        if argv is None:
            argv = [sys.executable, str(TRAIN_WORKER), "--out", str(out), *args]
        w = Worker(argv, worker_env(join, name), self.folder / f"{tag}.log", out)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.kill()


@pytest.fixture
def spawn(tmp_path):
    """A :class:`Spawner` for this test; its workers are killed at the end of the test."""
    spawner = Spawner(tmp_path)
    yield spawner
    spawner.close()


def run_to_end(workers: List[Worker], timeout: float = 120) -> List[dict]:
    """Waits for every worker to succeed (see :meth:`Worker.finish`); their JSON."""
    return [w.finish(timeout) for w in workers]


def rounds_by_number(result: dict) -> Dict[int, dict]:
    """A worker's applied rounds, by round number (each applied once)."""
    out: Dict[int, dict] = {}
    for r in result["rounds"]:
        assert r["round"] not in out, f"round {r['round']} applied twice: {result['rounds']}"
        out[r["round"]] = r
    return out


def assert_same_rounds(results: List[dict], expected_rounds: int) -> None:
    """Every worker applied rounds 0..expected_rounds-1 and, after each, holds the same
    parameters: the same round hash, and the same `consensus_hash()` as the script read it
    at the end of the step that applied the round."""
    per_worker = [rounds_by_number(r) for r in results]
    names = [r["name"] for r in results]
    for name, rounds in zip(names, per_worker):
        assert sorted(rounds) == list(range(expected_rounds)), (name, sorted(rounds))
    for n in range(expected_rounds):
        for key in ("hash", "consensus"):
            seen = {name: rounds[n][key] for name, rounds in zip(names, per_worker)}
            assert len(set(seen.values())) == 1, f"replicas differ after round {n}: {key} {seen}"
    finals = {r["name"]: r["final_hash"] for r in results}
    assert len(set(finals.values())) == 1, f"final parameters differ: {finals}"


def mean_loss(results: List[dict], steps: range) -> float:
    """The workers' mean training loss over `steps`."""
    values = [loss for r in results for step, loss in r["losses"] if step in steps]
    assert values, steps
    return sum(values) / len(values)


# The two-worker runs several test modules check, each run once per session.
RUN_STEPS, RUN_INNER_STEPS = 28, 4


class Run:
    """How one shared run is set up: its algorithm (the run's name by default), worker
    arguments for both workers and for each, how many rounds it has, and the share of its
    first steps' loss its last steps' must fall below."""

    def __init__(self, rounds: int, args=(), w0=(), w1=(), algorithm=None, falls_to=0.7):
        self.rounds = rounds
        self.falls_to = falls_to
        self.args = list(args)
        self.extra = {"w0": list(w0), "w1": list(w1)}
        self.algorithm = algorithm


RUNS = {
    # A round every step; the second worker holds its model as `.module` (DDP-style), so
    # this run also shows wrapped and plain models training together.
    "ddp": Run(RUN_STEPS, w1=["--wrap"]),
    "diloco": Run(RUN_STEPS // RUN_INNER_STEPS),
    "sparseloco": Run(RUN_STEPS // RUN_INNER_STEPS),
    # DeMo's own step replaces AdamW's (a round every step); its default lr (1e-3) is too
    # slow for a short run.
    "demo": Run(RUN_STEPS, args=["--set", "lr=0.01"]),
    # Two fragments of H = 8: one fragment's round every 4 steps, landing (and merged) 1
    # step later, while the next step trains.
    "streaming": Run(RUN_STEPS // 4, args=["--inner-steps", "8", "--set", "fragments=2",
                                           "--set", "overlap=1"]),
    # DiLoCo with each round in flight for 1 of the 4 steps between rounds; the last one,
    # launched after the last step, lands before the run ends. The per-step losses of this
    # short run swing by 3x with the batch, so only a fall is checked; what overlap costs
    # in loss is measured in BENCHMARKS.md ("Overlapped rounds").
    "diloco-overlap": Run(RUN_STEPS // RUN_INNER_STEPS, args=["--set", "overlap=1"],
                          algorithm="diloco", falls_to=0.9),
}


def run_args(run_name: str, name: str = "w0") -> List[str]:
    """The arguments of worker `name` in the shared run `run_name` (see RUNS); later
    arguments win, so a run's own --inner-steps replaces the default."""
    run = RUNS[run_name]
    return ["--algorithm", run.algorithm or run_name, "--steps", str(RUN_STEPS),
            "--inner-steps", str(RUN_INNER_STEPS), *run.args, *run.extra[name]]


@pytest.fixture(scope="session")
def two_worker_run(tmp_path_factory):
    """``two_worker_run(algorithm)``: the JSON of both workers (w0, w1) of a run of
    `algorithm` on a fresh in-process coordinator, run once per session."""
    done: Dict[str, List[dict]] = {}
    coords = Coordinators()
    spawners: List[Spawner] = []

    def get(algorithm: str) -> List[dict]:
        if algorithm not in done:
            spawn = Spawner(tmp_path_factory.mktemp(f"run-{algorithm}"))
            spawners.append(spawn)
            coord = coords(min_workers=2)
            workers = [spawn(coord.join, name, *run_args(algorithm, name))
                       for name in ("w0", "w1")]
            done[algorithm] = run_to_end(workers)
        return done[algorithm]

    yield get
    for spawn in spawners:
        spawn.close()
    coords.close()
