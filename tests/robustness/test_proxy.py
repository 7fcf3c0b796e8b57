"""FaultProxy against plain asyncio echo servers, with fake conch/etcd handshakes.

Waits poll with deadlines; timing assertions are lower bounds only."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

import pytest

from devkit.polling import poll
from devkit.robustness.proxy import FaultProxy, FaultRules, identify, link_key

T = TypeVar("T")

A, B, C = 0xA1, 0xB2, 0xC3  # member IDs; every proxy here fronts member B


def conch_hello(frm: int, to: int, kind: int = 1) -> bytes:
    payload = struct.pack(">4sHBQQQ", b"cnch", 1, kind, 7, frm, to)
    return struct.pack(">IB", len(payload), 1) + payload


HELLO = len(conch_hello(A, B))


def http_hello(frm: int, to: int | None = None) -> bytes:
    head = f"GET /raft/stream/msgapp/{frm:x} HTTP/1.1\r\nHost: x\r\nX-Server-From: {frm:x}\r\n"
    if to is not None:
        head += f"X-Raft-To: {to:x}\r\n"
    return (head + "User-Agent: test\r\n\r\n").encode()


class EchoServer:
    """An asyncio echo server in its own thread; counts accepted connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.accepted += 1
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()

        async def start() -> None:
            self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    yield srv
    srv.close()


@pytest.fixture
def rules() -> FaultRules:
    return FaultRules()


@pytest.fixture
def proxy(echo: EchoServer, rules: FaultRules) -> Iterator[FaultProxy]:
    p = FaultProxy(("127.0.0.1", echo.port), member_id=B, rules=rules,
                   rng=random.Random(1), peek_timeout=0.3).start()
    yield p
    p.close()


def dial(p: FaultProxy, hello: bytes = b"") -> socket.socket:
    s = socket.create_connection(p.address, timeout=5)
    if hello:
        s.sendall(hello)
    return s


def recv_exactly(s: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def nothing_arrives(s: socket.socket, within: float) -> bool:
    """True if neither data nor EOF arrives within ``within`` seconds."""
    s.settimeout(within)
    try:
        s.recv(1)
    except TimeoutError:
        return True
    return False


# --------------------------------------------------------------------------- identify


def test_identify_conch_and_http() -> None:
    assert identify(conch_hello(A, B)) == (A, B)
    assert identify(conch_hello(0, 0, kind=3)) == (None, None)
    assert identify(http_hello(A, B)) == (A, B)
    assert identify(http_hello(A)) == (A, None)
    assert identify(b"GET /raft/probing HTTP/1.1\r\nHost: x\r\n\r\n") == (None, None)
    assert identify(b"\x00\x00") == (None, None)
    assert identify(b"garbage that is no handshake") == (None, None)


# --------------------------------------------------------------------------- forwarding


@pytest.mark.parametrize("hello", [conch_hello(A, B), http_hello(A)], ids=["conch", "http"])
def test_forwards_and_identifies(proxy: FaultProxy, hello: bytes) -> None:
    with dial(proxy, hello) as s:
        assert recv_exactly(s, len(hello)) == hello  # the peeked bytes are forwarded
        s.sendall(b"x" * 100_000)
        assert recv_exactly(s, 100_000) == b"x" * 100_000
    want = 2 * (100_000 + len(hello))
    poll(lambda: proxy.stats().get(link_key(A, B), {}).get("bytes_forwarded", 0) >= want,
         5, "both directions counted on link A~B")
    assert proxy.stats()[link_key(A, B)]["connections"] == 1


def test_unidentified_connection(proxy: FaultProxy) -> None:
    with dial(proxy, b"GET /raft/probing HTTP/1.1\r\n\r\n") as s:
        recv_exactly(s, 30)
    assert proxy.stats()[link_key(None, B)]["connections"] == 1


def test_silent_client_is_forwarded_after_peek_timeout(proxy: FaultProxy,
                                                       echo: EchoServer) -> None:
    with dial(proxy) as s:
        poll(lambda: echo.accepted == 1, 5, "upstream connection after the peek timeout")
        s.sendall(b"late")
        assert recv_exactly(s, 4) == b"late"


def test_peek_is_bounded_in_size(proxy: FaultProxy) -> None:
    big = b"POST /raft HTTP/1.1\r\n" + b"X-Pad: " + b"y" * 40_000  # no end of head
    with dial(proxy) as s:
        s.sendall(big)
        assert recv_exactly(s, len(big)) == big


# --------------------------------------------------------------------------- blackhole


def test_blackhole_stalls_both_directions_then_delivers(proxy: FaultProxy, rules: FaultRules,
                                                        echo: EchoServer) -> None:
    with dial(proxy, conch_hello(A, B)) as s, dial(proxy, conch_hello(C, B)) as other:
        recv_exactly(s, HELLO)
        recv_exactly(other, HELLO)
        rules.blackhole(A, B)
        s.sendall(b"during")
        other.sendall(b"other link")
        assert recv_exactly(other, 10) == b"other link"  # only the A~B link is cut
        # a new connection on the cut link is accepted but not even dialed upstream
        with dial(proxy, conch_hello(A, B)) as late:
            assert nothing_arrives(s, 0.3)
            assert echo.accepted == 2
            rules.heal()
            assert recv_exactly(s, 6) == b"during"
            assert recv_exactly(late, HELLO) == conch_hello(A, B)
    assert proxy.stats()[link_key(A, B)]["chunks_stalled"] >= 1


def test_lossy_blackhole_resets_stalled_connections_on_heal(proxy: FaultProxy,
                                                           rules: FaultRules) -> None:
    with dial(proxy, conch_hello(A, B)) as s, dial(proxy, conch_hello(C, B)) as other:
        recv_exactly(s, HELLO)
        recv_exactly(other, HELLO)
        rules.blackhole(A, B, lossy=True)
        s.sendall(b"lost")
        assert nothing_arrives(s, 0.3)
        rules.heal()
        # the stalled connection is reset: what was queued never arrives
        s.settimeout(5.0)
        try:
            got = s.recv(100)
        except ConnectionResetError:
            got = b""
        assert got == b""
        other.sendall(b"still fine")
        assert recv_exactly(other, 10) == b"still fine"  # untouched link keeps working
    assert proxy.stats()[link_key(A, B)]["connections_reset"] >= 1


def test_blackhole_holds_responses(proxy: FaultProxy, rules: FaultRules) -> None:
    """Data already read upstream-bound still cannot come back while the link is cut."""
    with dial(proxy, http_hello(A)) as s:
        recv_exactly(s, len(http_hello(A)))
        rules.delay(A, B, 300)
        s.sendall(b"ping")  # read at once, held 300 ms, then the link is cut under it
        rules.blackhole(A, B)
        assert nothing_arrives(s, 0.6)
        rules.heal()
        assert recv_exactly(s, 4) == b"ping"


def test_isolate_cuts_unidentified_connections_too(proxy: FaultProxy,
                                                   rules: FaultRules) -> None:
    probe = b"GET /raft/probing HTTP/1.1\r\nHost: x\r\n\r\n"
    rules.blackhole(A, B)
    with dial(proxy, probe) as s:  # link rules do not apply to the unidentified
        assert recv_exactly(s, len(probe)) == probe
    rules.isolate(B)
    with dial(proxy, probe) as s, dial(proxy, conch_hello(C, B)) as t:
        assert nothing_arrives(s, 0.3)
        assert nothing_arrives(t, 0.01)
        rules.heal()
        assert recv_exactly(s, len(probe)) == probe
        assert recv_exactly(t, HELLO) == conch_hello(C, B)
    assert any("isolate" in line for line in rules.log())


# --------------------------------------------------------------------------- delay / drop


def test_delay_is_applied_in_order(proxy: FaultProxy, rules: FaultRules) -> None:
    rules.delay(A, B, 150, jitter_ms=20)
    with dial(proxy, conch_hello(A, B)) as s:
        recv_exactly(s, HELLO)
        started = time.monotonic()
        for i in range(5):
            s.sendall(b"%d" % i)
        got = recv_exactly(s, 5)
        elapsed = time.monotonic() - started
    assert got == b"01234"
    assert elapsed >= 2 * 0.130  # delayed on the way in and on the way back


def test_drop_resets_connections(proxy: FaultProxy, rules: FaultRules) -> None:
    rules.drop(A, B, 1.0)
    with dial(proxy, conch_hello(A, B)) as s:
        s.settimeout(5)
        with pytest.raises((ConnectionError, AssertionError)):
            data = s.recv(100)
            assert data, "closed"  # EOF counts as reset too
    assert proxy.stats()[link_key(A, B)]["connections_reset"] == 1
    rules.drop(A, B, 0.0)
    with dial(proxy, conch_hello(A, B)) as s:
        assert recv_exactly(s, HELLO) == conch_hello(A, B)


def test_drop_probability_is_seeded(proxy: FaultProxy, rules: FaultRules) -> None:
    rules.drop(A, B, 0.3)
    survived = 0
    for _ in range(20):
        with dial(proxy, conch_hello(A, B)) as s:
            try:
                if recv_exactly(s, HELLO, timeout=5):
                    survived += 1
            except ConnectionError:
                pass
    resets = proxy.stats()[link_key(A, B)]["connections_reset"]
    assert resets + survived == 20
    assert 0 < resets < 20


# --------------------------------------------------------------------------- cleanup


def test_close_resets_connections_and_stops(echo: EchoServer) -> None:
    p = FaultProxy(("127.0.0.1", echo.port), member_id=B).start()
    s = dial(p, conch_hello(A, B))
    recv_exactly(s, HELLO)
    p.rules.blackhole(A, B)
    stalled = dial(p, conch_hello(A, B))
    port = p.port
    p.close()
    assert p.open_connections() == 0
    assert p._thread is not None and not p._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    for sock in (s, stalled):
        sock.settimeout(5)
        try:
            assert sock.recv(1) == b""
        except ConnectionError:
            pass
        sock.close()
    p.close()  # idempotent
