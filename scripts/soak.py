#!/usr/bin/env python3
"""A real-process soak of `meridian coordinator` and `meridian worker`.

One coordinator (with a state folder, so it can restart) and four workers run on loopback,
each worker behind its own `meridian proxy` with a cross-continent WAN link to the
coordinator's region. From a seed, the soak SIGKILLs workers and the coordinator at random
moments for `--duration` seconds and restarts them (workers with the same `--name`), then
lets the run finish and checks, from what the processes wrote:

- every round the coordinator committed was applied exactly once by every worker: each
  worker incarnation's applied rounds continue, one by one, from where its parameters stood
  (round 0 for a fresh join, the rounds a peer's state held after a catch-up), and each
  worker's last incarnation ends at the run's last committed round;
- all replicas are identical: every worker that applied round r logged the same parameter
  hash for it, and the final `worker.json` hashes agree.

It prints a summary (duration, kills survived per process kind, rounds committed, rounds
applied per worker, replicas identical or not) and exits non-zero on any loss or
divergence. The checker is also run on deliberately corrupted copies of the records (a
diverged hash, a round applied twice, a round skipped): each must be caught, so a checker
that stopped comparing cannot pass.

Usage: scripts/soak.py --duration 600 --seed 7   (see --help)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_check import Incarnation, Records, check, controls, corrupt_hash, parse_coordinator_log, parse_worker_log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Each worker sits in one region of the `cross-continent` preset; the coordinator sits in
# us-east, the preset's home region. ap-southeast is the 250 ms RTT path.
REGIONS = ["us-west", "eu-west", "ap-southeast", "us-east"]
COORDINATOR_REGION = "us-east"
WORKERS = [f"w{i}" for i in range(len(REGIONS))]
# A commit's time in the coordinator's log (tracing's UTC timestamp, microseconds).
COMMIT_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})\d*Z .*round committed", re.M)

# ---------------------------------------------------------------------------------------
# Processes.


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    # The run's settings come from the flags alone: a MERIDIAN_* variable of the caller's
    # shell (MERIDIAN_JOIN, MERIDIAN_STEPS...) would otherwise change what a process does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_") and k != "RUST_LOG"}
    env["RUST_LOG"] = "info"
    return env


class Proc:
    """One supervised process: restarted with the same command, one log per incarnation."""

    def __init__(self, name: str, kind: str, argv: list[str], logs: Path):
        self.name, self.kind, self.argv, self.logs = name, kind, argv, logs
        self.incarnations: list[Incarnation] = []
        self.popen: subprocess.Popen | None = None
        self.restart_at: float | None = None

    def start(self) -> None:
        index = len(self.incarnations)
        log = self.logs / f"{self.name}.{index}.log"
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=child_env(), cwd=ROOT)
        self.incarnations.append(Incarnation(index=index, log=str(log.relative_to(self.logs.parent))))
        self.restart_at = None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
            self.incarnations[-1].killed = True

    def reap(self) -> int | None:
        """The exit status of an incarnation that ended on its own (recorded once)."""
        if self.popen is None:
            return None
        code = self.popen.poll()
        inc = self.incarnations[-1]
        if code is not None and not inc.killed and inc.exit_code is None:
            inc.exit_code = code
            return code
        return None

    def log_text(self, index: int = -1) -> str:
        path = self.logs.parent / self.incarnations[index].log
        return path.read_text(errors="replace") if path.exists() else ""


class SoakError(Exception):
    """The soak could not run (not: the run it watched failed a check)."""


def find_binary(given: str | None) -> Path:
    if given:
        path = Path(given)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        path = (target if target.is_absolute() else Path.cwd() / target) / "debug" / "meridian"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SoakError(f"no meridian binary at {path}: build it (cargo build -p meridian-trainer "
                        f"--bin meridian) or give --bin PATH")
    return path


def fresh_folder(out: Path) -> Path:
    """`out`, emptied: only a folder a previous soak left (or an empty one) is replaced."""
    out = out.resolve()
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / "logs").is_dir()):
            raise SoakError(f"--out {out} exists and is not a soak's folder; give another path")
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    return out


def write_private(path: Path, text: str) -> None:
    # The join string holds the run's secret: readable by its owner only, as the
    # coordinator writes its own --join-file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------
# The soak.


class Soak:
    """The processes of one soak, and what happened to them."""

    def __init__(self, args: argparse.Namespace, binary: Path, out: Path, rounds: int):
        self.args, self.out, self.rounds = args, out, rounds
        self.logs = out / "logs"
        self.rng = random.Random(args.seed)
        self.kills = {"worker": 0, "coordinator": 0}
        self.spared = 0
        self.unexpected: list[str] = []
        port = free_udp_port()
        self.join_file = out / "join.txt"
        self.coord = Proc("coordinator", "coordinator", [
            str(binary), "coordinator", "--listen", f"127.0.0.1:{port}", "--min-workers", str(len(WORKERS)),
            "--state-dir", str(out / "coordinator"), "--join-file", str(self.join_file), "--rounds", str(rounds),
        ], self.logs)
        self.proxies: list[Proc] = []
        self.workers: list[Proc] = []
        self.port = port
        self.binary = binary

    @property
    def everyone(self) -> list[Proc]:
        return [self.coord] + self.workers

    def launch(self) -> None:
        """The coordinator, then one proxy and one worker per region."""
        args, binary = self.args, self.binary
        self.coord.start()
        join = self.wait_for_join(60)
        for i, (name, region) in enumerate(zip(WORKERS, REGIONS)):
            pport = free_udp_port()
            self.proxies.append(Proc(f"proxy-{name}", "proxy", [
                str(binary), "proxy", "--listen", f"127.0.0.1:{pport}", "--to", f"127.0.0.1:{self.port}",
                "--preset", "cross-continent", "--link", f"{region} -> {COORDINATOR_REGION}",
                "--seed", str(args.seed * 16 + i), "--report-every-s", "0",
            ], self.logs))
            wjoin = self.out / f"join-{name}.txt"
            write_private(wjoin, join.replace(f"//127.0.0.1:{self.port}/", f"//127.0.0.1:{pport}/"))
            self.workers.append(Proc(name, "worker", [
                str(binary), "worker", "--join-file", str(wjoin), "--name", name, "--shards", str(len(WORKERS)),
                "--model", "mlp", "--algo", "diloco", "--inner-steps", str(args.inner_steps),
                "--steps", str(self.rounds * args.inner_steps), "--seed", str(args.seed),
                "--out", str(self.out / name),
            ], self.logs))
        for p in self.proxies + self.workers:
            p.start()

    def wait_for_join(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.join_file.exists() and self.join_file.read_text().strip():
                return self.join_file.read_text().strip()
            if not self.coord.alive():
                raise SoakError(f"the coordinator exited before writing {self.join_file}:\n"
                                f"{self.coord.log_text()[-2000:]}")
            time.sleep(0.1)
        raise SoakError(f"no join string in {self.join_file} after {timeout:.0f} s")

    def committed(self) -> list[tuple[int, int]]:
        """Every commit of every coordinator incarnation so far: (round, delivered)."""
        return [r for i in range(len(self.coord.incarnations)) for r in parse_coordinator_log(self.coord.log_text(i))]

    def longest_pause(self) -> float:
        """The longest time between two commits, in seconds (from the logs' timestamps)."""
        times = sorted(datetime.fromisoformat(m[1]) for i in range(len(self.coord.incarnations))
                       for m in COMMIT_TIME.finditer(self.coord.log_text(i)))
        return max(((b - a).total_seconds() for a, b in zip(times, times[1:])), default=0.0)

    def rounds_committed(self) -> int:
        return len({r for r, _ in self.committed()})

    def holds_latest(self, w: Proc, latest: int) -> bool:
        # Whether this incarnation's parameters include the latest committed round, so that
        # it can serve a newcomer and every worker that missed that round's commit.
        if not w.alive():
            return False
        nxt = 0
        for e in parse_worker_log(w.log_text(), self.args.inner_steps):
            nxt = e[1] if e[0] == "state" else e[1] + 1
        return nxt > latest

    def wait_for_round_zero(self, timeout: float) -> None:
        # The kills start once the run has: before round 0 the coordinator waits for all
        # four workers, and a machine starting five LibTorch processes at once takes seconds.
        deadline = time.monotonic() + timeout
        while not self.committed():
            if time.monotonic() > deadline:
                raise SoakError(f"the run did not commit round 0 within {timeout:.0f} s (logs in {self.logs})")
            dead = [p.name for p in self.everyone + self.proxies if not p.alive()]
            if dead:
                raise SoakError(f"{', '.join(dead)} exited before round 0 (logs in {self.logs})")
            time.sleep(0.2)

    def restart_due(self, now: float) -> None:
        for p in self.everyone:
            code = p.reap()
            if code:  # 0 is a process that finished the run
                self.unexpected.append(f"{p.name} (incarnation {p.incarnations[-1].index}) exited with status "
                                       f"{code} during the kills")
                p.restart_at = now
            if not p.alive() and p.restart_at is not None and now >= p.restart_at:
                p.start()

    def draw_kill(self) -> tuple[Proc, float]:
        """The next kill of the schedule: the seed picks the target and its downtime."""
        downtime = self.rng.uniform(*self.args.down)
        if self.rng.random() < self.args.coordinator_share:
            return self.coord, downtime
        return self.workers[self.rng.randrange(len(self.workers))], downtime

    def try_kill(self, target: Proc, downtime: float, now: float, since: float) -> bool:
        """Kills `target` unless it must be spared; False when it was spared."""
        if not target.alive():
            return True
        # Never kill the last live worker that holds the latest committed round: the run's
        # parameters would exist nowhere (the coordinator keeps commits, not tensors), and
        # the workers behind could neither replay nor take a state. That is one failure
        # more than any run can survive.
        if target.kind == "worker":
            latest = max((r for r, _ in self.committed()), default=-1)
            if not any(self.holds_latest(w, latest) for w in self.workers if w is not target):
                return False
        target.kill()
        self.kills[target.kind] += 1
        target.restart_at = now + downtime
        print(f"  {now - since:6.1f} s  SIGKILL {target.name}, back in {downtime:.1f} s "
              f"({self.rounds_committed()} rounds committed)", flush=True)
        return True

    def chaos(self, duration: float, tail: int) -> tuple[float, bool]:
        """Kills and restarts for `duration` s, or until the run is `tail` rounds from its
        end. Returns the seconds it lasted and whether the run's end cut it short."""
        start = time.monotonic()
        next_kill = start + self.rng.uniform(*self.args.gap)
        next_count = start
        # A kill that must wait: the others apply a commit a moment after the coordinator
        # logs it, so a spared target is retried a few times before the kill is dropped.
        pending: tuple[Proc, float, int] | None = None
        while (now := time.monotonic()) < start + duration:
            self.restart_due(now)
            if now >= next_count:
                next_count = now + 1.0
                if self.rounds_committed() >= self.rounds - tail:
                    return now - start, True
            if pending is None and now >= next_kill:
                next_kill = now + self.rng.uniform(*self.args.gap)
                pending = (*self.draw_kill(), 0)
            if pending is not None:
                target, downtime, tries = pending
                if self.try_kill(target, downtime, now, start):
                    pending = None
                elif tries >= 10:
                    print(f"  {now - start:6.1f} s  spare {target.name}: no other live worker holds "
                          f"the latest round", flush=True)
                    self.spared += 1
                    pending = None
                else:
                    pending = (target, downtime, tries + 1)
            time.sleep(0.2 if pending else 0.05)
        return time.monotonic() - start, False

    def drain(self, timeout: float) -> list[str]:
        """Everything back up, then the run finishes on its own. Returns who did not exit."""
        now = time.monotonic()
        for p in self.everyone:
            if p.reap():
                self.unexpected.append(f"{p.name} exited with status {p.incarnations[-1].exit_code} during the kills")
            if not p.alive() and p.incarnations[-1].exit_code != 0:
                p.start()
        deadline = now + timeout
        while time.monotonic() < deadline and any(p.alive() for p in self.everyone):
            time.sleep(0.2)
        for p in self.everyone:
            p.reap()
        return [p.name for p in self.everyone if p.alive()]

    def stop(self) -> None:
        for p in self.everyone:
            p.kill()
        # A proxy prints its counters on Ctrl-C: into its log, for a post-mortem.
        for p in self.proxies:
            if p.alive():
                p.popen.send_signal(signal.SIGINT)
        for p in self.proxies:
            try:
                if p.popen is not None:
                    p.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()

    def records(self) -> Records:
        rec = Records(rounds_expected=self.rounds, committed=self.committed(), workers={}, finals={})
        for w in self.workers:
            for i, inc in enumerate(w.incarnations):
                inc.events = parse_worker_log(w.log_text(i), self.args.inner_steps)
            rec.workers[w.name] = w.incarnations
            summary = self.out / w.name / "worker.json"
            try:
                rec.finals[w.name] = json.loads(summary.read_text()) if summary.exists() else None
            except (OSError, ValueError) as e:
                self.unexpected.append(f"{w.name}: cannot read {summary}: {e}")
                rec.finals[w.name] = None
        return rec


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60,
                    help="seconds of kills and restarts, from the commit of round 0 (default 60)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the kill schedule and the links' draws")
    ap.add_argument("--rounds", type=int, help="outer rounds of the run (default: enough to outlast --duration)")
    ap.add_argument("--inner-steps", type=int, default=5, help="inner steps per round, H (default 5)")
    ap.add_argument("--gap", type=float, nargs=2, default=(4.0, 10.0), metavar=("MIN", "MAX"),
                    help="seconds between kills, drawn uniformly (default 4 10)")
    ap.add_argument("--down", type=float, nargs=2, default=(0.0, 3.0), metavar=("MIN", "MAX"),
                    help="seconds a killed process stays down (default 0 3)")
    ap.add_argument("--coordinator-share", type=float, default=0.25,
                    help="share of kills aimed at the coordinator (default 0.25)")
    ap.add_argument("--bin", help="the meridian binary (default: $CARGO_TARGET_DIR/debug/meridian)")
    ap.add_argument("--out", default=str(ROOT / "out" / "soak"),
                    help="folder for logs and state (a previous soak's is replaced)")
    ap.add_argument("--drain-timeout", type=float, help="seconds the run may take to finish after the kills stop")
    ap.add_argument("--json", help="also write the summary as JSON here")
    ap.add_argument("--corrupt-hash", metavar="WORKER", choices=WORKERS,
                    help="checker test: flip the hash WORKER logged for its last round and wrote in "
                         "worker.json before checking; the soak must then report a divergence and fail")
    args = ap.parse_args()
    if args.duration < 0 or args.inner_steps < 1 or (args.rounds is not None and args.rounds < 6):
        ap.error("--duration must be >= 0, --inner-steps >= 1 and --rounds >= 6")
    if not 0 < args.gap[0] <= args.gap[1] or not 0 <= args.down[0] <= args.down[1] \
            or not 0 <= args.coordinator_share <= 1:
        ap.error("--gap needs 0 < MIN <= MAX, --down 0 <= MIN <= MAX, --coordinator-share 0..1")
    return args


def main() -> int:
    args = parse_args()
    # Under kills every 4-10 s a round takes about 3 s on average (a restarted process
    # loads LibTorch, a killed coordinator's workers reconnect, a newcomer takes a state);
    # the run is sized to outlast the kills, and the kills stop a few rounds before its end
    # so that the run finishes cleanly (no kill in its last rounds).
    rounds = args.rounds or max(12, int(args.duration * 0.4) + 10)
    tail = 4
    drain_timeout = args.drain_timeout or max(120.0, 2.0 * args.duration)
    try:
        soak = Soak(args, find_binary(args.bin), fresh_folder(Path(args.out)), rounds)
    except SoakError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    launched = time.monotonic()
    try:
        soak.launch()
        print(f"soak: seed {args.seed}, {args.duration:.0f} s of kills, {rounds} rounds of H={args.inner_steps}, "
              f"4 workers behind proxies ({', '.join(f'{w}: {r}' for w, r in zip(WORKERS, REGIONS))} -> "
              f"{COORDINATOR_REGION}), logs in {soak.out}", flush=True)
        soak.wait_for_round_zero(180)
        chaos, cut_short = soak.chaos(args.duration, tail)
        timed_out = soak.drain(drain_timeout)
    except SoakError as e:
        print(f"soak: {e}\nsoak: FAILED", file=sys.stderr)
        return 1
    finally:
        soak.stop()
    total = time.monotonic() - launched

    records = soak.records()
    if args.corrupt_hash:
        corrupt_hash(records, args.corrupt_hash)
    problems, figures = check(records)
    problems = soak.unexpected + [f"{name}: still running {drain_timeout:.0f} s after the kills stopped"
                                  for name in timed_out] + problems
    missed = controls(records) if not problems else []
    problems += [f"checker: a corrupted copy with {m} passed" for m in missed]

    kills = soak.kills
    print(f"soak: {total:.0f} s in all, kills for {chaos:.0f} s"
          + (" (the run reached its last rounds first)" if cut_short else ""))
    print(f"  kills survived: {kills['worker']} worker, {kills['coordinator']} coordinator "
          f"({len(soak.coord.incarnations)} coordinator incarnations)")
    pause = soak.longest_pause()
    print(f"  kills spared: {soak.spared} (no other live worker held the latest round)")
    print(f"  rounds committed: {figures['committed']} of {rounds}, the longest pause between two {pause:.1f} s")
    for name, f in figures["workers"].items():
        print(f"  {name}: {f['incarnations']} incarnations, {f['applied']} rounds applied "
              f"({f['replayed']} replayed), {f['states_taken']} states taken from a peer")
    identical = figures["identical"] and figures["final_hash"]
    print(f"  replicas identical: {'yes, ' + figures['final_hash'] if identical else 'NO'}")
    if not problems:
        print("  checker controls: a diverged hash, a round applied twice and a skipped round were each caught")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seed": args.seed, "duration_s": args.duration, "chaos_s": chaos, "total_s": total,
            "kills": kills, "spared": soak.spared, "rounds": rounds, "committed": figures["committed"],
            "longest_pause_s": pause,
            "workers": figures["workers"], "identical": bool(identical),
            "final_hash": figures["final_hash"], "problems": problems,
        }, indent=2))
    for p in problems:
        print(f"  PROBLEM: {p}")
    print(f"soak: {'FAILED' if problems else 'passed'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
