"""The soak's checker (see scripts/soak.py): what the processes' logs say, and whether the
run lost or diverged anything.

It is a pure function of the records (parsed logs, worker.json files, what the driver saw
of each process), so that it can also be run on deliberately corrupted copies of good
records: a checker that stopped comparing would pass those, and the soak fails then.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

# What the processes log (tracing's default format, written to stderr).
APPLIED = re.compile(r'round applied round=(\d+) replayed=(true|false) .*hash="([0-9a-f]+)"')
STATE = re.compile(r"continuing from a peer's state round=(\d+) step=(\d+)")
COMMITTED = re.compile(r"round committed round=(\d+) .*?delivered=(\d+)")


# ---------------------------------------------------------------------------------------
# Records: what one process incarnation left, parsed from its log.


@dataclass
class Incarnation:
    """One run of one worker process, from start to exit or kill."""

    index: int
    log: str
    killed: bool = False
    exit_code: int | None = None
    # In log order: ("state", base_round) or ("applied", round, replayed, hash).
    events: list = field(default_factory=list)


def parse_worker_log(text: str, inner_steps: int) -> list:
    """The events of one worker log that the checker judges, in order.

    A peer's state is logged with the step it ends; with DiLoCo's exchange after every
    `inner_steps` steps, a state at step s holds rounds 0..s/H-1, so the next round to
    apply is s/H (the logged round may be earlier: a donor serves its latest state).
    """
    events = []
    for line in text.splitlines():
        if m := APPLIED.search(line):
            events.append(("applied", int(m[1]), m[2] == "true", m[3]))
        elif m := STATE.search(line):
            events.append(("state", int(m[2]) // inner_steps))
    return events


def parse_coordinator_log(text: str) -> list[tuple[int, int]]:
    """Every commit a coordinator log shows: (round, members delivered)."""
    return [(int(m[1]), int(m[2])) for m in COMMITTED.finditer(text)]


# ---------------------------------------------------------------------------------------
# The checker: a pure function of the records, so that it can be run on corrupted copies.


@dataclass
class Records:
    rounds_expected: int
    # Every commit of every coordinator incarnation: (round, members delivered).
    committed: list[tuple[int, int]]
    workers: dict[str, list[Incarnation]]
    finals: dict[str, dict | None]  # each worker's worker.json (None when missing)


def check(rec: Records) -> tuple[list[str], dict]:
    """Returns the problems found (empty: nothing lost, nothing diverged) and figures."""
    problems: list[str] = []
    # A round the coordinator opened after the run's last exchange commits empty (nobody
    # had anything left to send) while it waits for the workers to leave; workers never
    # apply it (see trainer/src/networked/drive.rs), so it is no round of the run.
    committed = sorted({r for r, delivered in rec.committed if r < rec.rounds_expected or delivered > 0})
    n = len(committed)
    if committed != list(range(n)):
        gaps = sorted(set(range(max(committed, default=-1) + 1)) - set(committed))
        problems.append(f"coordinator: committed rounds are not contiguous (missing {gaps})")
    if n != rec.rounds_expected:
        problems.append(f"coordinator: {n} rounds committed, the run has {rec.rounds_expected}")

    hashes: dict[int, dict[str, str]] = {}  # round -> {"w1#2": hash}
    per_worker = {}
    for name, incarnations in rec.workers.items():
        applied = replayed = via_state = 0
        end = None
        for inc in incarnations:
            who = f"{name} (incarnation {inc.index}, {inc.log})"
            if not inc.killed and inc.exit_code not in (0, None):
                problems.append(f"{who}: exited with status {inc.exit_code}")
            nxt = 0  # the next round this incarnation's parameters need
            for event in inc.events:
                if event[0] == "state":
                    nxt = event[1]
                    via_state += 1
                    continue
                _, r, was_replayed, h = event
                if r < nxt:
                    problems.append(f"{who}: round {r} applied twice (its parameters held rounds 0..{nxt - 1})")
                elif r > nxt:
                    gap = f"round {nxt}" if r == nxt + 1 else f"rounds {nxt}..{r - 1}"
                    problems.append(f"{who}: {gap} skipped before round {r}")
                if r not in committed:
                    problems.append(f"{who}: applied round {r}, which the coordinator never committed")
                nxt = r + 1
                applied += 1
                replayed += was_replayed
                hashes.setdefault(r, {})[f"{name}#{inc.index}"] = h
            end = nxt
        last = incarnations[-1] if incarnations else None
        if last is None or last.killed or last.exit_code != 0:
            problems.append(f"{name}: its last incarnation did not finish the run")
        elif end != n:
            problems.append(f"{name}: ended holding rounds 0..{end - 1}, the run committed 0..{n - 1}")
        final = rec.finals.get(name)
        if final is None:
            problems.append(f"{name}: no worker.json")
        elif last is not None and final.get("rounds") != sum(e[0] == "applied" for e in last.events):
            problems.append(f"{name}: worker.json counts {final.get('rounds')} rounds, its log {sum(e[0] == 'applied' for e in last.events)}")
        per_worker[name] = {"applied": applied, "replayed": replayed, "states_taken": via_state,
                            "incarnations": len(incarnations)}

    for r in sorted(hashes):
        seen = hashes[r]
        if len(set(seen.values())) > 1:
            groups: dict[str, list[str]] = {}
            for who, h in sorted(seen.items()):
                groups.setdefault(h, []).append(who)
            problems.append(f"round {r}: replicas diverged: " + "; ".join(f"{h} by {', '.join(w)}" for h, w in groups.items()))
    finals = {name: f.get("consensus_hash") for name, f in rec.finals.items() if f}
    if len(set(finals.values())) > 1:
        problems.append("final worker.json hashes differ: " + ", ".join(f"{k} {v}" for k, v in sorted(finals.items())))
    last_round = hashes.get(n - 1, {})
    if finals and last_round and set(finals.values()) != set(last_round.values()):
        problems.append(f"final hashes {sorted(set(finals.values()))} are not round {n - 1}'s {sorted(set(last_round.values()))}")
    figures = {"committed": n, "workers": per_worker,
               "identical": not any("diverged" in p or "hashes" in p for p in problems),
               "final_hash": next(iter(set(finals.values())), None) if len(set(finals.values())) == 1 else None}
    return problems, figures


def corrupt_hash(rec: Records, name: str) -> None:
    """Flips the last bit of the hash `name` logged for its last applied round, and of its
    worker.json hash, as a worker whose parameters drifted would report them."""
    if name not in rec.workers or not rec.workers[name]:
        raise ValueError(f"--corrupt-hash {name}: no such worker (the workers are {', '.join(sorted(rec.workers))})")
    for inc in reversed(rec.workers[name]):
        applied = [i for i, e in enumerate(inc.events) if e[0] == "applied"]
        if applied:
            kind, r, rep, h = inc.events[applied[-1]]
            inc.events[applied[-1]] = (kind, r, rep, flip(h))
            break
    if rec.finals.get(name):
        rec.finals[name]["consensus_hash"] = flip(rec.finals[name]["consensus_hash"])


def flip(h: str) -> str:
    return format(int(h, 16) ^ 1, f"0{len(h)}x")


def controls(rec: Records) -> list[str]:
    """Runs the checker on three corrupted copies of good records; returns the corruptions
    it failed to flag (empty: each was caught)."""
    missed = []
    # Good records end with every worker's last incarnation applying rounds; each control
    # picks a different worker.
    names = [n for n in sorted(rec.workers) if any(e[0] == "applied" for e in rec.workers[n][-1].events)]
    if not names:
        return ["every corruption (no worker applied a round to corrupt)"]

    def applied(r: Records, name: str) -> tuple[Incarnation, list[int]]:
        inc = r.workers[name][-1]
        return inc, [i for i, e in enumerate(inc.events) if e[0] == "applied"]

    # 1. One worker reports a different hash for its last round and at the end.
    bad = copy.deepcopy(rec)
    corrupt_hash(bad, names[1 % len(names)])
    if not any("diverged" in p for p in check(bad)[0]):
        missed.append("a diverged hash")
    # 2. One worker applies its last round a second time.
    bad = copy.deepcopy(rec)
    inc, idx = applied(bad, names[2 % len(names)])
    inc.events.insert(idx[-1] + 1, inc.events[idx[-1]])
    if not any("applied twice" in p for p in check(bad)[0]):
        missed.append("a round applied twice")
    # 3. One worker skips a round (its first applied round is dropped).
    bad = copy.deepcopy(rec)
    inc, idx = applied(bad, names[3 % len(names)])
    del inc.events[idx[0]]
    if not any("skipped" in p for p in check(bad)[0]):
        missed.append("a skipped round")
    return missed


