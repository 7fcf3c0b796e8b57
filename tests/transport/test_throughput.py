"""Throughput micro-check (printed, never asserted): MsgApp with a 128-byte entry, A -> B.

Both transports share one process and one event loop, so the figure is the end-to-end CPU cost
of encode + frame + write + read + decode + deliver for one core. Run with ``-s`` to see it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from conch.raft.codec import decode_message, encode_message

from .nodes import Node, app, connect, run, wait_active


async def _measure(tmp_path: Path, n: int, batch: int, window: int) -> tuple[float, int]:
    a = await Node(1, str(tmp_path / "a")).start()
    b = await Node(2, str(tmp_path / "b")).start()
    connect([a, b])
    try:
        await wait_active([a, b])
        payload = b"v" * 128
        msgs = [app(1, 2, i, payload) for i in range(batch)]
        room = asyncio.Event()
        done = asyncio.Event()
        sent = 0

        def on_count(c: int) -> None:
            if sent - c <= window // 2:
                room.set()
            if c >= n:
                done.set()
        b.on_count = on_count
        t0 = time.perf_counter()
        while sent < n:
            if sent - b.count >= window:
                room.clear()
                await room.wait()
            a.t.send(msgs)
            sent += batch
            await asyncio.sleep(0)
        await done.wait()
        dt = time.perf_counter() - t0
        drops = a.t.stats()["etcd_network_peer_sent_failures_total"]["2"]
        return n / dt, drops
    finally:
        await a.t.stop()
        await b.t.stop()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_throughput_report(tmp_path: Path, loop_kind: str) -> None:
    n, batch, window = 100_000, 64, 2048
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.install()
    try:
        rate, drops = run(_measure(tmp_path, n, batch, window), timeout=120)
    finally:
        if loop_kind == "uvloop":
            asyncio.set_event_loop_policy(None)
    m = app(1, 2, 1, b"v" * 128)
    data = encode_message(m)
    k = 20_000
    t0 = time.perf_counter()
    for _ in range(k):
        encode_message(m)
    enc = k / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(k):
        decode_message(data)
    dec = k / (time.perf_counter() - t0)
    print(f"\n[transport throughput, {loop_kind}] {rate:,.0f} msg/s end to end "
          f"({len(data)}-byte MsgApp, {batch} per send(), {drops} dropped); "
          f"codec alone: encode {enc:,.0f}/s, decode {dec:,.0f}/s")
    assert drops == 0
