"""The seeded simulation suite (see tests/raft/sim.py for what each seed does and checks).

Knobs (environment):
- ``CONCH_RAFT_SEEDS``   number of seeds (default 10000)
- ``CONCH_RAFT_SEED_START`` first seed (default 0)
- ``CONCH_RAFT_WORKERS`` worker processes (default: min(2, cpu count))

Every failure names its seed and a one-line replay command.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from tests.raft.sim import Params, Sim, SimFailure, replay_command, run_range, run_seed

DEFAULT_SEEDS = 10_000


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def _run_parallel(start: int, count: int, bug: str = "", stop_at_first: bool = False) -> list[str]:
    workers = max(1, _env_int("CONCH_RAFT_WORKERS", min(2, os.cpu_count() or 1)))
    if workers == 1 or count < 200:
        return run_range(start, count, bug, stop_at_first)
    # Interleave seeds in chunks so both workers get a similar mix of 3- and 5-node runs.
    chunk = 250
    jobs = [(s, min(chunk, start + count - s), bug, stop_at_first)
            for s in range(start, start + count, chunk)]
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    with ctx.Pool(workers) as pool:
        # imap yields in seed order; leaving the block terminates outstanding work.
        for result in pool.imap(_run_job, jobs):
            failures.extend(result)
            if stop_at_first and failures:
                break
    return failures


def _run_job(job: tuple[int, int, str, bool]) -> list[str]:
    return run_range(*job)


def _report(failures: list[str], bug: str = "") -> str:
    lines = []
    for f in failures[:20]:
        seed = int(f.split(":")[0].split()[1])
        lines.append(f"{f}\n    replay: {replay_command(seed, bug)}")
    more = f"\n... and {len(failures) - 20} more" if len(failures) > 20 else ""
    return "\n".join(lines) + more


def test_simulation_seeds() -> None:
    start = _env_int("CONCH_RAFT_SEED_START", 0)
    count = _env_int("CONCH_RAFT_SEEDS", DEFAULT_SEEDS)
    t0 = time.monotonic()
    failures = _run_parallel(start, count)
    elapsed = time.monotonic() - t0
    print(f"\nraft simulation: {count} seeds from {start} in {elapsed:.1f}s, "
          f"{len(failures)} failed")
    assert not failures, f"{len(failures)} of {count} seeds failed:\n" + _report(failures)


@pytest.mark.parametrize("bug", ["votes_across_terms", "stale_read"])
def test_checker_catches_broken_variant(bug: str) -> None:
    """The checker has teeth: a deliberately broken core fails within the default seeds."""
    failures = _run_parallel(0, DEFAULT_SEEDS, bug=bug, stop_at_first=True)
    assert failures, f"broken variant {bug!r} survived {DEFAULT_SEEDS} seeds"
    print(f"\n{bug}: caught: {failures[0]}")


def test_replay_is_deterministic() -> None:
    """Same seed, same run: the trace of a seed is reproducible (the replay command works)."""
    def fingerprint(seed: int) -> tuple[object, ...]:
        sim = Sim(seed)
        sim.run()
        return (sim.now, sim.max_committed, tuple(sorted(sim.leaders.items())),
                tuple(sorted(sim.committed.items())), sim.reads_answered, sim.counter)

    for seed in (3, 4, 17):
        assert fingerprint(seed) == fingerprint(seed)


def test_simulator_exercises_the_interesting_paths() -> None:
    """Guard against a simulator that silently stopped doing anything."""
    elections = commits = reads = snapshots = confs = 0
    for seed in range(60):
        sim = Sim(seed)
        sim.run()
        elections += len(sim.leaders)
        commits += sim.max_committed
        reads += sim.reads_answered
        snapshots += sum(n.storage.snapshot().metadata.index > 0 for n in sim.nodes.values())
        confs += sum(1 for (_t, ty, _d) in sim.committed.values() if ty != 0)
    assert elections >= 60 and commits >= 600 and reads >= 50
    assert snapshots >= 30 and confs >= 10


def test_failure_message_names_seed_and_replay() -> None:
    err = run_seed(0, bug="votes_across_terms")
    assert err is not None and err.startswith("seed 0:")
    assert "--seed 0 --bug votes_across_terms" in replay_command(0, "votes_across_terms")


def test_params_cover_both_sizes() -> None:
    assert {Params.from_seed(s).n for s in range(4)} == {3, 5}
    assert issubclass(SimFailure, AssertionError)
