#!/usr/bin/env python3
"""Turns criterion's results (target/criterion) into the Markdown tables of BENCHMARKS.md.

Each row: the operation, the element count, the median time, elements per second, and the
throughput as a ratio to the memcpy of the same bytes measured in the same group and run.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
SIZE = {"1M": 1 << 20, "16M": 1 << 24, "64M": 1 << 26}


def size_of(label):
    if label in SIZE:
        return SIZE[label]
    for suffix, mult in (("M", 1 << 20), ("k", 1 << 10)):
        if label.endswith(suffix) and label[:-1].isdigit():
            return int(label[:-1]) * mult
    return int(label) if label.isdigit() else None


def median_ns(path):
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "report"):
    rows = {}
    for est in group.glob("*/*/new/estimates.json"):
        op, label = est.parts[-4], est.parts[-3]
        rows[(op, label)] = median_ns(est)
    if not rows:
        continue
    print(f"\n### {group.name}\n")
    print("| operation | elements | median | elements/s | × memcpy |")
    print("|---|---|---|---|---|")
    labels = sorted({l for _, l in rows}, key=lambda l: size_of(l) or 0)
    for label in labels:
        n = size_of(label)
        ref = rows.get(("memcpy", label))
        for (op, l), ns in sorted(rows.items(), key=lambda r: (r[0][0] != "memcpy", r[0][0])):
            if l != label:
                continue
            rate = f"{n / (ns / 1e9):.3g}" if n else "?"
            ratio = f"{ref / ns:.3f}" if ref else "?"
            print(f"| {op} | {label} | {fmt_time(ns)} | {rate} | {ratio} |")
