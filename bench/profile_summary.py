#!/usr/bin/env python3
"""Summarise a py-spy raw profile of a member: the inclusive share of each function on the
event loop thread (idle included, since uvloop's C loop shows as its caller).

    python bench/profile_summary.py bench/results/profile_put_1c_leader.txt 25
"""

from __future__ import annotations

import collections
import re
import sys


def summarise(path: str, top: int) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            if not any("Runner.run" in f for f in frames):
                continue  # not the event loop thread
            n = int(count)
            total += n
            seen: set[str] = set()
            for frame in frames[4:]:  # below asyncio.run
                name = re.sub(r" \(.*", "", frame)
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += n
    print("loop-thread samples", total)
    for name, n in inclusive.most_common(top):
        print(f"{100 * n / total:5.1f}% {name}")


if __name__ == "__main__":
    summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
