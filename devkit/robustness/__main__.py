"""``python -m devkit.robustness``: robustness runs against conch or etcd from the command line.

    python -m devkit.robustness --list
    python -m devkit.robustness --target conch --scenario leader-kill --seed 7
    python -m devkit.robustness --target etcd --scenario leader-partition --duration 30
    python -m devkit.robustness --target conch --minutes 10            # long profile, mixed faults
    python -m devkit.robustness --target both --scenario standard      # every network/process fault

Each run prints its report (seed, operation counts by outcome, faults, checker verdicts); a
failed run keeps its directory (member logs and data, history.jsonl, report.txt) under --out.
The exit status is 1 when any run failed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

from devkit.robustness.faults import FAILPOINTS, standard_faults
from devkit.robustness.run import RunResult, run_scenario, scenario_names


def _expand(names: list[str], target: str) -> list[str]:
    known = scenario_names(target)
    out: list[str] = []
    for n in names:
        if n == "all":
            out += known
        elif n == "standard":
            out += [f.name for f in standard_faults() if target in f.targets]
        elif n == "failpoints":
            out += [f"failpoint-{p}" for p in FAILPOINTS] if target == "conch" else []
        else:
            out.append(n)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devkit.robustness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["conch", "etcd", "both"], default="conch")
    ap.add_argument("--scenario", action="append", default=[],
                    help="a scenario name, or all / standard / failpoints (repeatable; "
                         "default: mixed for --minutes, standard otherwise)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of a single run (default: random, printed)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of traffic per run")
    ap.add_argument("--minutes", type=float, default=None,
                    help="long profile: back-to-back runs with random seeds for this long")
    ap.add_argument("--out", default="robustness-runs", help="where run directories go")
    ap.add_argument("--keep", action="store_true", help="keep run directories of passing runs")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    args = ap.parse_args(argv)

    targets = ["conch", "etcd"] if args.target == "both" else [args.target]
    if args.list:
        for t in targets:
            print(f"{t}: {' '.join(scenario_names(t))}")
        return 0

    results: list[RunResult] = []
    seeder = random.Random(args.seed) if args.seed is not None else random.SystemRandom()

    def one(target: str, scenario: str, seed: int) -> None:
        print(f"--- {scenario} on {target}, seed {seed}, {args.duration:.0f}s", flush=True)
        r = run_scenario(target, scenario, seed, args.duration, Path(args.out), keep=args.keep)
        results.append(r)
        print(r.to_text(), flush=True)

    if args.minutes is not None:
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() + args.duration < end:
            for t in targets:
                names = _expand(args.scenario or ["mixed"], t)
                one(t, seeder.choice(names), seeder.randrange(1 << 31))
    else:
        for t in targets:
            for name in _expand(args.scenario or ["standard"], t):
                seed = args.seed if args.seed is not None else seeder.randrange(1 << 31)
                one(t, name, seed)

    print("=== summary")
    totals: Counter[str] = Counter()
    for r in results:
        for k, v in r.summary.ops_by_outcome.items():
            totals[k] += v
        print(f"{'PASS' if r.ok else 'FAIL'} {r.target:5} {r.scenario:40} seed {r.seed:<11} "
              f"ops {sum(r.summary.ops_by_outcome.values()):6} faults {r.faults_applied}"
              + ("" if r.ok else f"  -> {r.run_dir}"))
    failed = sum(not r.ok for r in results)
    print(f"{len(results)} runs, {failed} failed; operations {dict(totals)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
