"""Waiting for our turn in an election / mutex queue (Go's waitDeletes, hardened).

Each round reads, in one txn, our own key and the youngest key created before ours:
- our key is gone (or re-created) -> ``SessionExpired`` (Go's Mutex re-check; Election
  never had it, etcd #19597);
- no older key -> our turn; returned only after that same read saw our key intact;
- else watch the prefix from the read's revision + 1 (so no DELETE can be missed,
  python-etcd3 #1107) until the predecessor or our own key is deleted, racing the
  session's ``done`` and the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from typing import Any

from conch.client.concurrency._core import Wait, wait_check_ops, wait_decide, wakes_waiter
from conch.client.concurrency.errors import SessionExpired, WaitTimeout
from conch.client.errors import ClientError, Compacted


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return deadline - time.monotonic()


def _expired_error(session: Any) -> SessionExpired:
    return SessionExpired(f"session (lease {session.lease_id:x}) ended while waiting")


def wait_turn(
    session: Any, kprefix: bytes, my_key: bytes, my_rev: int, deadline: float | None
) -> Any:
    """Block until we lead / hold the lock; returns the header of the deciding read."""
    client = session.client
    while True:
        if session.done.is_set():
            raise _expired_error(session)
        left = _remaining(deadline)
        if left is not None and left <= 0:
            raise WaitTimeout("timed out waiting for our turn")
        compare, success = wait_check_ops(kprefix, my_key, my_rev)
        d = wait_decide(client.txn(compare, success, []), my_rev)
        if d.state is Wait.GONE or session.done.is_set():
            raise _expired_error(session)
        if d.state is Wait.ACQUIRED:
            return d.header
        assert d.pred_key is not None
        pred_key = d.pred_key
        wake = threading.Event()
        failure: list[ClientError] = []

        def on_watch(
            item: Any,
            pred_key: bytes = pred_key,
            wake: threading.Event = wake,
            failure: list[ClientError] = failure,
        ) -> None:
            if isinstance(item, ClientError):
                failure.append(item)
                wake.set()
            elif wakes_waiter(item.events, pred_key, my_key):
                wake.set()

        remove = session._add_done_callback(wake.set)
        try:
            w = client.watch_callback(kprefix, on_watch, prefix=True, start_revision=d.watch_from)
            try:
                if not wake.wait(_remaining(deadline)):
                    raise WaitTimeout("timed out waiting for our turn")
            finally:
                w.cancel()
        finally:
            remove()
        if failure and not isinstance(failure[0], Compacted):
            raise failure[0]
        # compacted or woken: the next read decides


async def _maybe_await(x: Any) -> Any:
    if inspect.isawaitable(x):
        return await x
    return x


async def wait_turn_async(
    session: Any, kprefix: bytes, my_key: bytes, my_rev: int, deadline: float | None
) -> Any:
    client = session.client
    while True:
        if session.done.is_set():
            raise _expired_error(session)
        left = _remaining(deadline)
        if left is not None and left <= 0:
            raise WaitTimeout("timed out waiting for our turn")
        compare, success = wait_check_ops(kprefix, my_key, my_rev)
        d = wait_decide(await client.txn(compare, success, []), my_rev)
        if d.state is Wait.GONE or session.done.is_set():
            raise _expired_error(session)
        if d.state is Wait.ACQUIRED:
            return d.header
        assert d.pred_key is not None
        pred_key = d.pred_key
        w = await _maybe_await(client.watch(kprefix, prefix=True, start_revision=d.watch_from))

        async def consume(w: Any = w, pred_key: bytes = pred_key) -> None:
            async for wr in w:
                if wakes_waiter(wr.events, pred_key, my_key):
                    return

        watch_task = asyncio.ensure_future(consume())
        done_task = asyncio.ensure_future(session.done.wait())
        try:
            finished, _ = await asyncio.wait(
                {watch_task, done_task},
                timeout=_remaining(deadline),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for t in (watch_task, done_task):
                t.cancel()
            await asyncio.gather(watch_task, done_task, return_exceptions=True)
            with contextlib.suppress(ClientError):
                await _maybe_await(w.cancel())
        if not finished:
            raise WaitTimeout("timed out waiting for our turn")
        if watch_task in finished and not watch_task.cancelled():
            exc = watch_task.exception()
            if exc is not None and not isinstance(exc, Compacted):
                raise exc
