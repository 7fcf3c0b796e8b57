"""The whole-member simulator (devkit/sim): virtual time, exact replay, the default seed
suite, and injected bugs it must catch.

`CONCH_SIM_SEEDS=N` runs N seeds in the suite instead of 1,000."""

from __future__ import annotations

import asyncio
import os

import pytest

from devkit.sim import loop as vloop
from devkit.sim.run import run_batch, run_seed

DEFAULT_SEEDS = 1000
BUG_SEEDS = 200
#: seeds that fail without an injected bug, under investigation (not papered over). Empty:
#: seeds 502, 637 and 709 found that a keepalive of an expired lease answered TTL 0 before
#: its revoke applied; when the revoke was then lost to a leader change, the next leader kept
#: the lease alive (fixed in EtcdServer.lease_keep_alive, as etcd's lessor.Renew waits).
KNOWN_FAILING: set[int] = set()


def test_virtual_loop_runs_timers_without_waiting() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(30)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), 5)
        return loop.time() - t0

    assert vloop.run(scenario()) == pytest.approx(35.0)


def test_virtual_loop_reports_a_deadlock() -> None:
    async def stuck() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(vloop.SimDeadlock):
        vloop.run(stuck())


def test_same_seed_replays_exactly() -> None:
    a, b = run_seed(3), run_seed(3)
    assert a.ok, a.problems
    assert a.digest == b.digest and a.stats == b.stats and a.events == b.events
    assert run_seed(4).digest != a.digest


def test_same_seed_replays_exactly_across_processes() -> None:
    first = run_batch(range(7, 9), jobs=1)
    second = run_batch(range(7, 9), jobs=2)
    assert [r.digest for r in first] == [r.digest for r in second]


def test_default_seed_suite() -> None:
    n = int(os.environ.get("CONCH_SIM_SEEDS", DEFAULT_SEEDS))
    results = run_batch(range(n), jobs=2)
    assert len(results) == n
    failed = [r for r in results if not r.ok and r.seed not in KNOWN_FAILING]
    undecided = [r.seed for r in results if r.notes]
    print(f"{n} seeds, {len(failed)} failed; checker out of budget on {len(undecided)}")
    assert not failed, "\n".join(
        f"seed {r.seed}: {r.problems[0][:500]}\n  replay: {r.replay()}" for r in failed[:10])


@pytest.mark.parametrize("bug", ["double-apply", "ack-before-durable"])
def test_injected_bug_is_caught(bug: str) -> None:
    results = run_batch(range(BUG_SEEDS), bug=bug, jobs=2, stop_on_fail=True)
    caught = [r for r in results if not r.ok]
    assert caught, f"{bug}: not caught in seeds 0..{BUG_SEEDS - 1}"
    first = caught[0]
    print(f"{bug}: caught by seed {first.seed}: {first.problems[0][:300]}\n  {first.replay()}")
    # and the failing seed replays exactly
    again = run_seed(first.seed, bug)
    assert not again.ok and again.digest == first.digest
