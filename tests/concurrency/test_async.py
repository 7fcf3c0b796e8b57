"""The asyncio flavours on AsyncClient: AsyncSession, AsyncElection, AsyncMutex, async_stm."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from conch.client import AsyncClient
from conch.client.concurrency import (
    AsyncElection,
    AsyncMutex,
    AsyncSession,
    AsyncSTM,
    Locked,
    NoLeader,
    SessionExpired,
    async_stm,
)
from devkit import harness


async def apoll(pred: Callable[[], Awaitable[object]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run(any_server: harness.ServerProcess, body: Callable[[AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        c = AsyncClient([any_server.endpoint])
        try:
            await asyncio.wait_for(body(c), 60)
        finally:
            await c.close()

    asyncio.run(main())


async def _n(c: AsyncClient, prefix: str) -> int:
    return len((await c.get(prefix + "/", prefix=True)).kvs)


def test_async_session(any_server: harness.ServerProcess) -> None:
    async def body(c: AsyncClient) -> None:
        async with AsyncSession(c, ttl=3) as s:
            first = s.expires_at
            await apoll(lambda: asyncio.sleep(0, s.expires_at > first + 1.5), 10, "keepalive")
            assert (await c.lease_time_to_live(s.lease_id)).ttl > 0
        assert s.done.is_set()
        assert (await c.lease_time_to_live(s.lease_id)).ttl == -1
        s2 = await AsyncSession.create(c, ttl=3)
        await c.lease_revoke(s2.lease_id)
        await asyncio.wait_for(s2.done.wait(), 5)
        await s2.close()

    run(any_server, body)


def test_async_election(any_server: harness.ServerProcess) -> None:
    async def body(c: AsyncClient) -> None:
        s1, s2 = await AsyncSession.create(c, ttl=10), await AsyncSession.create(c, ttl=10)
        try:
            e1, e2 = AsyncElection(s1, "/ael"), AsyncElection(s2, "/ael")
            seen: list[bytes | None] = []

            async def observe() -> None:
                async for kv in e1.observe():
                    seen.append(None if kv is None else kv.value)

            obs = asyncio.ensure_future(observe())
            await apoll(lambda: asyncio.sleep(0, seen == [None]), 5, "no leader")
            with pytest.raises(NoLeader):
                await e1.leader()
            await e1.campaign("a")
            w = asyncio.ensure_future(e2.campaign("b", timeout=20))
            await apoll(lambda: _eq(_n(c, "/ael"), 2), 5, "second candidate")
            assert not w.done()
            assert (await e2.leader()).value == b"a"
            await e1.resign()
            await asyncio.wait_for(w, 10)
            assert (await e1.leader()).value == b"b"
            await e2.resign()
            await apoll(lambda: asyncio.sleep(0, seen == [None, b"a", b"b", None]), 5, "observe")
            obs.cancel()
            await asyncio.gather(obs, return_exceptions=True)
        finally:
            await s1.close()
            await s2.close()

    run(any_server, body)


async def _eq(aw: Awaitable[int], v: int) -> bool:
    return await aw == v


def _counter(c: AsyncClient, prefix: str, n: int) -> Callable[[], Awaitable[bool]]:
    return lambda: _eq(_n(c, prefix), n)


def test_async_session_expiry_during_campaign_and_lock(any_server: harness.ServerProcess) -> None:
    async def body(c: AsyncClient) -> None:
        holder = await AsyncSession.create(c, ttl=10)
        try:
            await AsyncElection(holder, "/aexp").campaign("leader")
            await AsyncMutex(holder, "/aexpl").lock()

            def campaign(s: AsyncSession) -> Awaitable[int]:
                return AsyncElection(s, "/aexp").campaign("w", timeout=20)

            def lock(s: AsyncSession) -> Awaitable[int]:
                return AsyncMutex(s, "/aexpl").lock(timeout=20)

            for prefix, make in (("/aexp", campaign), ("/aexpl", lock)):
                s = await AsyncSession.create(c, ttl=30)
                t = asyncio.ensure_future(make(s))
                two = _counter(c, prefix, 2)
                await apoll(two, 5, "waiter key")
                await c.lease_revoke(s.lease_id)
                with pytest.raises(SessionExpired):
                    await asyncio.wait_for(t, 5)
                await s.close()
        finally:
            await holder.close()

    run(any_server, body)


def test_async_mutex_and_cancel(any_server: harness.ServerProcess) -> None:
    async def body(c: AsyncClient) -> None:
        s1, s2 = await AsyncSession.create(c, ttl=10), await AsyncSession.create(c, ttl=10)
        try:
            m1, m2 = AsyncMutex(s1, "/alk"), AsyncMutex(s2, "/alk")
            async with m1:
                with pytest.raises(Locked):
                    await m2.try_lock()
                t = asyncio.ensure_future(m2.lock())
                await apoll(lambda: _eq(_n(c, "/alk"), 2), 5, "waiter key")
                t.cancel()  # a cancelled lock removes its key (like Go)
                await asyncio.gather(t, return_exceptions=True)
                assert await _n(c, "/alk") == 1
                t = asyncio.ensure_future(m2.lock(timeout=20))
                await apoll(lambda: _eq(_n(c, "/alk"), 2), 5, "waiter key")
            await asyncio.wait_for(t, 10)
            assert (await c.txn([m2.is_owner()], [], [])).succeeded
            await m2.unlock()
            await m2.unlock()
        finally:
            await s1.close()
            await s2.close()

    run(any_server, body)


def test_async_mutex_cancelled_during_acquire_leaves_no_key(
    any_server: harness.ServerProcess,
) -> None:
    """Regression (found by the full suite under load): a lock cancelled while its acquire txn
    was in flight left its waiter key behind, which would block every later locker."""

    async def body(c: AsyncClient) -> None:
        s1, s2 = await AsyncSession.create(c, ttl=10), await AsyncSession.create(c, ttl=10)
        try:
            m1, m2 = AsyncMutex(s1, "/alc"), AsyncMutex(s2, "/alc")
            async with m1:
                # cancel after 0, 1, 2, ... loop turns: some land while the txn is in flight
                for turns in range(12):
                    t = asyncio.ensure_future(m2.lock())
                    for _ in range(turns):
                        await asyncio.sleep(0)
                    t.cancel()
                    await asyncio.gather(t, return_exceptions=True)
                    assert await _n(c, "/alc") == 1, f"waiter key left after {turns} turns"
        finally:
            await s1.close()
            await s2.close()

    run(any_server, body)


def test_async_campaign_cancelled_during_acquire_leaves_no_candidate(
    any_server: harness.ServerProcess,
) -> None:
    """Same window as the mutex: a campaign cancelled while its txn was in flight must not
    leave a candidate key that could later be elected with nobody behind it."""

    async def body(c: AsyncClient) -> None:
        s1, s2 = await AsyncSession.create(c, ttl=10), await AsyncSession.create(c, ttl=10)
        try:
            await AsyncElection(s1, "/aec").campaign("leader")
            for turns in range(12):
                t = asyncio.ensure_future(AsyncElection(s2, "/aec").campaign("w"))
                for _ in range(turns):
                    await asyncio.sleep(0)
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
                assert await _n(c, "/aec") == 1, f"candidate key left after {turns} turns"
        finally:
            await s1.close()
            await s2.close()

    run(any_server, body)


def test_async_stm_transfers(any_server: harness.ServerProcess) -> None:
    async def body(c: AsyncClient) -> None:
        for k in ("/aa", "/ab"):
            await c.put(k, "50")

        async def transfer(s: AsyncSTM) -> None:
            a = int(await s.get("/aa") or 0)
            b = int(await s.get("/ab") or 0)
            s.put("/aa", str(a - 1))
            s.put("/ab", str(b + 1))

        await asyncio.gather(*(async_stm(c, transfer, max_attempts=100) for _ in range(10)))
        a = int((await c.get("/aa")).kvs[0].value)
        b = int((await c.get("/ab")).kvs[0].value)
        assert (a, b) == (40, 60)

    run(any_server, body)
