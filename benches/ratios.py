#!/usr/bin/env python3
"""Ratios ours / peer from criterion's saved samples, with a bootstrap 95% interval.

Usage: python3 benches/ratios.py [CRITERION_DIR]   (default: $CARGO_TARGET_DIR/criterion or
target/criterion). Standard library only.

For every criterion group, each benchmark whose name starts with `ozzobit_auth` is compared with
every other benchmark of the same group and parameter. A benchmark's figure is its mean time per
iteration over criterion's samples (time / iterations of each sample); the interval resamples the
samples of both benchmarks independently (2,000 resamples) and takes the 2.5th and 97.5th
percentiles of the ratio of the two means. Prints one markdown table.
"""

import json
import os
import random
import sys
from collections import defaultdict

RESAMPLES = 2000


def load(root):
    benches = []
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "sample.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        with open(os.path.join(dirpath, "sample.json")) as f:
            sample = json.load(f)
        per_iter = [t / i for t, i in zip(sample["times"], sample["iters"])]
        if meta["function_id"] is None:
            name, param = meta["value_str"], ""
        else:
            name, param = meta["function_id"], meta["value_str"] or ""
        benches.append((meta["group_id"], param, name, per_iter))
    return benches


def mean(xs):
    return sum(xs) / len(xs)


def ratio_ci(a, b, rng):
    ratios = []
    for _ in range(RESAMPLES):
        ra = [a[rng.randrange(len(a))] for _ in a]
        rb = [b[rng.randrange(len(b))] for _ in b]
        ratios.append(mean(ra) / mean(rb))
    ratios.sort()
    return ratios[int(0.025 * RESAMPLES)], ratios[int(0.975 * RESAMPLES) - 1]


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    rng = random.Random(1)
    groups = defaultdict(dict)
    for group, param, name, per_iter in load(root):
        groups[(group, param)][name] = per_iter
    print("| group | param | ours | peer | ours/peer | 95% interval | ours mean | peer mean | samples |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (group, param), members in sorted(groups.items(), key=lambda kv: (kv[0][0], int(kv[0][1]) if kv[0][1].isdigit() else kv[0][1])):
        for ours in sorted(n for n in members if n.startswith("ozzobit_auth")):
            for peer in sorted(n for n in members if not n.startswith("ozzobit_auth")):
                a, b = members[ours], members[peer]
                lo, hi = ratio_ci(a, b, rng)
                print(f"| {group} | {param} | {ours} | {peer} | {mean(a) / mean(b):.3f} | "
                      f"{lo:.3f}–{hi:.3f} | {fmt_time(mean(a))} | {fmt_time(mean(b))} | "
                      f"{len(a)}/{len(b)} |")


if __name__ == "__main__":
    main()
