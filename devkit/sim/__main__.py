"""python -m devkit.sim --seed N [--bug NAME] [-v] | --seeds A..B [--jobs J] [--shard K/N]"""

from __future__ import annotations

import argparse
import os
import sys
import time

from devkit.sim.bugs import BUGS
from devkit.sim.run import parse_range, run_batch, run_seed, to_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devkit.sim", description=__doc__)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--seeds", help="A..B (inclusive)")
    ap.add_argument("--bug", choices=BUGS)
    ap.add_argument("--jobs", type=int, default=0, help="run --seeds in J subprocesses")
    ap.add_argument("--shard", default="0/1", help="K/N: this process runs every N-th seed")
    ap.add_argument("--json", action="store_true", help="one JSON result per line")
    ap.add_argument("--stop-on-fail", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":  # set iteration must replay too
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "devkit.sim", *sys.argv[1:]])
    if args.seed is None and args.seeds is None:
        ap.error("give --seed N or --seeds A..B")
    seeds = parse_range(args.seeds) if args.seeds else range(args.seed, args.seed + 1)
    started = time.perf_counter()
    if args.jobs:
        results = run_batch(seeds, args.bug, args.jobs, args.stop_on_fail)
    else:
        k, n = (int(x) for x in args.shard.split("/"))
        results = []
        for s in seeds:
            if (s - seeds.start) % n != k:
                continue
            r = run_seed(s, args.bug, args.verbose)
            results.append(r)
            if args.json:
                print(to_json(r), flush=True)
            if args.stop_on_fail and not r.ok:
                break
    failed = [r for r in results if not r.ok]
    if not args.json:
        for r in results:
            if len(results) == 1 or not r.ok:
                print(f"seed {r.seed}: {'ok' if r.ok else 'FAILED'} {r.stats} digest {r.digest}"
                      f" ({r.wall_s}s)")
                for p in r.problems:
                    print("  problem:", p)
                for note in r.notes:
                    print("  note:", note)
                if args.verbose or (not r.ok and len(results) == 1):
                    print("\n".join("    " + e for e in r.events))
                if not r.ok:
                    print("  replay:", r.replay())
        print(f"{len(results)} seeds, {len(failed)} failed, "
              f"{time.perf_counter() - started:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
