"""AsyncClient on the same core paths (plain functions running asyncio.run)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from conch.client import AsyncClient, Compare, Op, WatchResult
from conch.client import errors as errs
from devkit.harness import free_port

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_async_kv_txn_errors(any_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with AsyncClient([f"127.0.0.1:{free_port()}", any_server.endpoint]) as c:
            p = await c.put("a", "1")
            r = await c.put("a", "2", prev_kv=True)
            assert r.prev_kv is not None and r.prev_kv.value == b"1"
            await c.put("ab", "3")
            g = await c.get("a", prefix=True, sort_order="descend")
            assert [kv.key for kv in g.kvs] == [b"ab", b"a"] and g.count == 2
            assert (await c.get("a", revision=p.header.revision)).kvs[0].value == b"1"
            t = await c.txn(
                [Compare.value("a") == "2", Compare.version("a", prefix=True) > 0],
                [Op.put("b", "x"), Op.get("b")], [],
            )  # fmt: skip
            assert t.succeeded and t.responses[1].kvs[0].value == b"x"  # type: ignore[union-attr]
            d = await c.delete("a", prefix=True, prev_kv=True)
            assert d.deleted == 2
            with pytest.raises(errs.FutureRevision):
                await c.get("a", revision=10_000)
            with pytest.raises(errs.DuplicateKey):
                await c.txn([], [Op.put("d", "1"), Op.put("d", "2")])
            with pytest.raises(errs.LeaseNotFound):
                await c.put("l", "v", lease=99999)
            assert len((await c.member_list()).members) == 1
            assert (await c.status()).version
            assert (await c.hash_kv()).hash > 0

    run(main())


def test_async_watch(any_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with AsyncClient(any_server.endpoint) as c:
            first = (await c.put("w/1", "a")).header.revision
            await c.put("w/2", "b")
            w = await c.watch("w/", prefix=True, start_revision=first, prev_kv=True)
            got: list[bytes] = []
            async for r in w:
                got += [e.kv.key for e in r.events]
                if len(got) == 2:
                    break
            assert got == [b"w/1", b"w/2"]
            await c.put("w/1", "c")
            r = await w.get(10)
            assert r.events[0].prev_kv is not None and r.events[0].prev_kv.value == b"a"
            await w.cancel()
            assert not w.alive
            with pytest.raises(StopAsyncIteration):
                await w.get(1)
            # callbacks, plain and async
            seen: list[WatchResult | errs.ClientError] = []

            async def acb(x: WatchResult | errs.ClientError) -> None:
                seen.append(x)

            cw = await c.watch_callback("cb", acb)
            await c.put("cb", "1")
            for _ in range(1000):
                if seen:
                    break
                await asyncio.sleep(0.01)
            assert isinstance(seen[0], WatchResult)
            await cw.cancel()
            # compaction
            rev = (await c.put("w/1", "d")).header.revision
            await c.compact(rev, physical=True)
            cwatch = await c.watch("w/1", start_revision=first)
            with pytest.raises(errs.Compacted) as ei:
                await cwatch.get(10)
            assert ei.value.compact_revision == rev

    run(main())


def test_async_lease(any_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with AsyncClient(any_server.endpoint) as c:
            lease = await c.lease_grant(30)
            await c.put("lk", "v", lease=lease.id)
            info = await c.lease_time_to_live(lease.id, keys=True)
            assert info.keys == [b"lk"] and info.granted_ttl == 30
            assert lease.id in await c.leases()
            assert await c.lease_keep_alive_once(lease.id) == 30
            ka = c.lease_keep_alive(lease.id)
            assert await ka.get(10) == 30
            await c.lease_revoke(lease.id)
            ttls = [t async for t in ka]
            assert ttls[-1] == 0 and ka.gone and ka.done.is_set()
            assert await c.lease_keep_alive_once(lease.id) == 0
            await ka.close()

    run(main())


@pytest.mark.parametrize("kind", ["etcd", "conch"])
def test_async_watch_resumes_after_restart(server_factory, kind: str) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(kind)

    async def main() -> None:
        async with AsyncClient(srv.endpoint, timeout=15) as c:
            w = await c.watch("r/", prefix=True)
            for i in range(3):
                await c.put(f"r/{i}", "v")
            await asyncio.to_thread(srv.kill, signal.SIGKILL)
            await asyncio.to_thread(srv.start)
            for i in range(3, 6):
                await c.put(f"r/{i}", "v")
            keys: list[bytes] = []
            while len(keys) < 6:
                keys += [e.kv.key for e in (await w.get(30)).events]
            assert keys == [f"r/{i}".encode() for i in range(6)]
            await w.cancel()

    run(main())
