"""Sans-IO tests: framing, handshake validation, snapshot frame order, queue/link/backoff."""

from __future__ import annotations

import hashlib
import random

import pytest

from conch.transport import wire
from conch.transport.peer import Backoff, OutQueue, PeerLink
from conch.transport.wire import (
    ConnKind,
    FrameDecoder,
    FrameType,
    Handshake,
    HandshakeReply,
    SnapAck,
    SnapEvent,
    SnapshotReceiverState,
    SnapTrailer,
    Status,
    WireError,
)


def test_frames_round_trip_any_split() -> None:
    rng = random.Random(7)
    payloads = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))) for _ in range(50)]
    stream = b"".join(wire.frame(FrameType.MESSAGE, p) for p in payloads)
    for trial in range(200):
        dec = FrameDecoder()
        got: list[tuple[int, bytes]] = []
        pos = 0
        while pos < len(stream):
            step = rng.choice([1, 2, 5, 17, 100, 1000, len(stream)])
            got += dec.feed(stream[pos:pos + step])
            pos += step
        assert [p for _, p in got] == payloads, trial
        assert all(t == FrameType.MESSAGE for t, _ in got)
        assert dec.buffered() == 0


def test_decoder_keeps_partial_frame() -> None:
    dec = FrameDecoder()
    f = wire.frame(FrameType.MESSAGE, b"hello")
    assert dec.feed(f[:3]) == []
    assert dec.feed(f[3:7]) == []
    assert dec.feed(f[7:] + f) == [(FrameType.MESSAGE, b"hello")] * 2
    assert dec.feed(b"") == []


def test_out_queue_batch_is_decodable() -> None:
    q = OutQueue(max_messages=10)
    for i in range(5):
        assert q.push(bytes([i]) * (i + 1))
    data, n, nbytes = q.take()
    assert (n, nbytes) == (5, 15)
    assert [p for _, p in FrameDecoder().feed(data)] == [bytes([i]) * (i + 1) for i in range(5)]
    assert q.take() == (b"", 0, 0)


def test_decoder_refuses_oversize_frames() -> None:
    dec = FrameDecoder(max_frame=10)
    with pytest.raises(WireError):
        dec.feed(wire.frame(FrameType.MESSAGE, b"x" * 11))
    # an HTTP request line is refused as soon as its first 5 bytes arrive
    dec = FrameDecoder(max_frame=wire.MAX_HANDSHAKE_FRAME)
    with pytest.raises(WireError):
        dec.feed(b"GET /")


def test_handshake_round_trip_and_checks() -> None:
    hs = Handshake(ConnKind.STREAM, 0xCDF818194E3A8C32, 0x8E9E05C52164694D, 0x1234)
    [(t, p)] = FrameDecoder().feed(hs.encode())
    assert Handshake.decode(t, p) == hs

    def check(h: Handshake, **kw: bool) -> HandshakeReply:
        return wire.check_handshake(h, cluster_id=0xCDF818194E3A8C32, member_id=0x1234, **kw)

    assert check(hs).ok
    r = check(Handshake(ConnKind.STREAM, 0x99, 0x8E9E05C52164694D, 0x1234))
    assert r.status == Status.CLUSTER_MISMATCH
    assert r.reason == "cluster ID mismatch (local cdf818194e3a8c32, remote 99)"
    assert (r.cluster_id, r.member_id) == (0xCDF818194E3A8C32, 0x1234)
    r = check(Handshake(ConnKind.STREAM, 0xCDF818194E3A8C32, 5, 0x4321))
    assert r.status == Status.MEMBER_MISMATCH and "remote wants 4321" in r.reason
    assert check(hs, is_removed=True).status == Status.REMOVED
    assert check(hs, is_known=False).status == Status.UNKNOWN_MEMBER
    assert check(Handshake(ConnKind.STREAM, 1, 2, 0x1234, version=9)).status == \
        Status.VERSION_MISMATCH
    assert check(Handshake(7, 0xCDF818194E3A8C32, 2, 0x1234)).status == Status.BAD_HANDSHAKE

    [(t, p)] = FrameDecoder().feed(r.encode())
    assert HandshakeReply.decode(t, p) == r


def test_handshake_garbage() -> None:
    with pytest.raises(WireError):
        Handshake.decode(FrameType.MESSAGE, b"x" * 40)
    with pytest.raises(WireError):
        Handshake.decode(FrameType.HANDSHAKE, b"xxxx" + b"\0" * 40)
    with pytest.raises(WireError):
        Handshake.decode(FrameType.HANDSHAKE, b"cnch")
    with pytest.raises(WireError):
        HandshakeReply.decode(FrameType.SNAP_ACK, b"\0" * 17)


def test_snapshot_frames_order() -> None:
    st = SnapshotReceiverState()
    assert st.on_frame(FrameType.SNAP_HEADER, b"m") is SnapEvent.HEADER
    assert st.on_frame(FrameType.SNAP_CHUNK, b"abc") is SnapEvent.CHUNK
    assert st.on_frame(FrameType.SNAP_CHUNK, b"de") is SnapEvent.CHUNK
    assert st.received == 5
    tr = SnapTrailer(5, hashlib.sha256(b"abcde").digest())
    [(t, p)] = FrameDecoder().feed(tr.encode())
    assert st.on_frame(t, p) is SnapEvent.TRAILER
    assert SnapTrailer.decode(p) == tr
    with pytest.raises(WireError):
        st.on_frame(FrameType.SNAP_CHUNK, b"late")
    with pytest.raises(WireError):
        SnapshotReceiverState().on_frame(FrameType.SNAP_CHUNK, b"x")
    st = SnapshotReceiverState()
    st.on_frame(FrameType.SNAP_HEADER, b"")
    with pytest.raises(WireError):
        st.on_frame(FrameType.MESSAGE, b"")
    with pytest.raises(WireError):
        SnapTrailer.decode(b"short")
    for ack in (SnapAck(True), SnapAck(False, "SHA-256 mismatch")):
        [(t, p)] = FrameDecoder().feed(ack.encode())
        assert SnapAck.decode(t, p) == ack


def test_out_queue_limits() -> None:
    q = OutQueue(max_messages=3, max_bytes=10)
    assert q.push(b"1234") and q.push(b"5678")
    assert not q.push(b"abc")  # 11 bytes > 10
    assert q.push(b"ab")
    assert not q.push(b"")  # 3 messages
    assert q.clear() == 3 and q.count == 0
    # a single message bigger than max_bytes still goes when the queue is empty
    assert q.push(b"x" * 100)


def test_backoff() -> None:
    b = Backoff(0.05, 1.0)
    assert [b.next() for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.05


def test_peer_link_queue_then_drop() -> None:
    link = PeerLink(100.0, unreachable_after=0.5, max_messages=2)
    assert not link.up
    assert link.offer(b"a", 100.1) == (True, 0)  # never connected, but within the grace
    assert link.offer(b"b", 100.2) == (True, 0)
    assert link.offer(b"c", 100.3) == (False, 1)  # queue full
    assert link.offer(b"d", 100.6) == (False, 3)  # down too long: queue discarded as well
    assert link.queue.count == 0 and link.unreachable(100.6)
    link.connected(101.0)
    assert link.up and link.active_since == 101.0 and not link.unreachable(200.0)
    assert link.offer(b"e", 200.0) == (True, 0)
    link.disconnected(201.0)
    assert link.active_since is None
    assert link.offer(b"f", 201.4) == (True, 0)  # reconnect within the grace delivers it
    assert link.offer(b"g", 201.5) == (False, 3)
    link.disconnected(300.0)  # already down: down_since unchanged
    assert link.down_since == 201.0
