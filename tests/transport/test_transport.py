"""Transports on 127.0.0.1 ephemeral ports: ordering, refusal, reconnect, drops, snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from pathlib import Path

import pytest

from conch.raft.types import Message, MessageType, Snapshot, SnapshotMetadata
from conch.transport import SnapshotHeader, wire
from conch.transport.wire import ConnKind, FrameDecoder, FrameType, Handshake, SnapTrailer
from devkit.procs import free_port

from .nodes import CLUSTER, Node, app, connect, run, wait_active, wait_until


def snap_msg(frm: int, to: int, index: int) -> Message:
    return Message(MessageType.MsgSnap, to=to, frm=frm, term=3,
                   snapshot=Snapshot(b"", SnapshotMetadata(index=index, term=3)))


async def pump(src: Node, dst: Node, n: int, batch: int = 100, start: int = 0) -> None:
    """Send n MsgApp (index start..start+n-1) from src to dst, yielding between batches."""
    for i in range(start, start + n, batch):
        src.t.send([app(src.id, dst.id, j) for j in range(i, min(i + batch, start + n))])
        await asyncio.sleep(0)


def test_two_transports_exchange_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        a = await Node(1, str(tmp_path / "a")).start()
        b = await Node(2, str(tmp_path / "b")).start()
        connect([a, b])
        try:
            await wait_active([a, b])
            n = 5000
            await asyncio.gather(pump(a, b, n), pump(b, a, n, batch=7))
            await wait_until(lambda: a.count == n and b.count == n, what="all messages")
            assert [m.index for m in b.received[1]] == list(range(n))
            assert [m.index for m in a.received[2]] == list(range(n))
            m = b.received[1][17]
            assert (m.type, m.frm, m.to, m.term, m.commit) == (MessageType.MsgApp, 1, 2, 1, 17)
            assert m.entries[0].index == 18 and m.entries[0].data == b"x" * 16
            sa, sb = a.t.stats(), b.t.stats()
            assert sa["conch_network_peer_sent_messages_total"]["2"] == n
            assert sb["conch_network_peer_received_messages_total"]["1"] == n
            assert sa["etcd_network_peer_sent_bytes_total"]["2"] == \
                sb["etcd_network_peer_received_bytes_total"]["1"] > 0
            assert sa["etcd_network_peer_sent_failures_total"]["2"] == 0
            assert sa["conch_network_peer_active"]["2"] == 1
            assert a.unreachable == [] and b.unreachable == []
        finally:
            await a.t.stop()
            await b.t.stop()
    run(main())


def test_three_transports_order_per_peer(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = [await Node(i, str(tmp_path / str(i))).start() for i in (0x11, 0x22, 0x33)]
        connect(nodes)
        try:
            await wait_active(nodes)
            n = 3000
            await asyncio.gather(*(pump(s, d, n, batch=13 * (k + 1))
                                   for k, (s, d) in enumerate(
                                       (s, d) for s in nodes for d in nodes if s is not d)))
            await wait_until(lambda: all(x.count == 2 * n for x in nodes), what="all messages")
            for d in nodes:
                for s in nodes:
                    if s is not d:
                        assert [m.index for m in d.received[s.id]] == list(range(n))
                        assert all(m.to == d.id for m in d.received[s.id])
        finally:
            for x in nodes:
                await x.t.stop()
    run(main())


def test_wrong_cluster_id_refused_with_log_on_both_sides(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.transport")

    async def main() -> None:
        a = await Node(0x8E9E05C52164694D, str(tmp_path / "a"), cluster=0x1234).start()
        b = await Node(0x91BC3C398FB3C146, str(tmp_path / "b")).start()
        connect([a, b])
        try:
            want_b = ("rejected connection from member 8e9e05c52164694d: cluster ID mismatch"
                      " (local cdf818194e3a8c32, remote 1234)")
            want_a = (f"member 91bc3c398fb3c146 at {b.url} rejected our connection: cluster ID"
                      " mismatch (local 1234, remote cdf818194e3a8c32)")
            await wait_until(lambda: any(r.getMessage().startswith(want_b)
                                         for r in caplog.records) and
                             any(r.getMessage() == want_a for r in caplog.records),
                             what="both rejection lines")
            a.t.send([app(a.id, b.id, 1)])
            assert a.t.active_since(b.id) is None and b.t.active_since(a.id) is None
            assert b.count == 0 and a.count == 0
            levels = {r.levelno for r in caplog.records if "cluster ID mismatch" in r.getMessage()}
            assert levels >= {logging.ERROR}
        finally:
            await a.t.stop()
            await b.t.stop()
    run(main())


def test_wrong_destination_and_removed_member_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.transport")

    async def main() -> None:
        a = await Node(1, str(tmp_path / "a")).start()
        b = await Node(2, str(tmp_path / "b")).start()
        c = await Node(3, str(tmp_path / "c")).start()
        try:
            # a believes member 9 lives at b's URL
            b.t.add_peer(1, [a.url])
            a.t.add_peer(9, [b.url])
            await wait_until(lambda: any(
                "rejected connection from member 1: destination member ID mismatch (local 2,"
                " remote wants 9)" in r.getMessage() for r in caplog.records), what="b's line")
            await wait_until(lambda: any(
                "member 9 at" in r.getMessage() and "member ID mismatch (the peer there is"
                " member 2, expected 9)" in r.getMessage() for r in caplog.records),
                what="a's line")
            # c removed a: a's stream to c is refused
            c.t.add_peer(1, [a.url])
            c.t.remove_peer(1)
            a.t.add_peer(3, [c.url])
            await wait_until(lambda: any(
                "rejected connection from member 1: member 1 was removed" in r.getMessage()
                for r in caplog.records), what="removed line")
            assert a.t.active_since(3) is None
            # a member nobody told c about is refused too
            d = await Node(4, str(tmp_path / "d")).start()
            try:
                d.t.add_peer(3, [c.url])
                await wait_until(lambda: any(
                    "rejected connection from member 4: member 4 is not a known peer"
                    in r.getMessage() for r in caplog.records), what="unknown line")
            finally:
                await d.t.stop()
        finally:
            for x in (a, b, c):
                await x.t.stop()
    run(main())


def test_non_conch_client_is_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.transport")

    async def main() -> None:
        a = await Node(1, str(tmp_path / "a")).start()
        try:
            host, port = a.url.removeprefix("http://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /raft/stream/message/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            rest = await reader.read()  # EOF: the listener closed
            writer.close()
            assert rest == b"" or wire.HandshakeReply.decode(
                *FrameDecoder().feed(rest)[0]).status == wire.Status.BAD_HANDSHAKE
            assert any("rejected connection from 127.0.0.1" in r.getMessage()
                       for r in caplog.records)
        finally:
            await a.t.stop()
    run(main())


def test_peer_restart_reconnects(tmp_path: Path) -> None:
    async def main() -> None:
        a = await Node(1, str(tmp_path / "a"), unreachable_after=0.2).start()
        b = await Node(2, str(tmp_path / "b")).start()
        port = int(b.url.rsplit(":", 1)[1])
        connect([a, b])
        b2: Node | None = None
        try:
            await wait_active([a, b])
            await pump(a, b, 100)
            await wait_until(lambda: b.count == 100)
            await b.t.stop()
            await wait_until(lambda: 2 in a.unreachable, what="stream loss reported")
            assert a.t.active_since(2) is None
            # while b is down for longer than unreachable_after, sends drop and report

            def dropping() -> bool:
                a.t.send([app(1, 2, 0)])
                return a.t.stats()["etcd_network_peer_sent_failures_total"]["2"] > 0
            await wait_until(dropping, what="drops while down")
            b2 = Node(2, str(tmp_path / "b"), port=port)
            await b2.start()
            b2.t.add_peer(1, [a.url])
            i = 1000

            def send_one() -> bool:
                nonlocal i
                a.t.send([app(1, 2, i)])
                i += 1
                return b2 is not None and b2.count > 0
            await wait_until(send_one, what="delivery after the restart")
            assert a.t.active_since(2) is not None
            # after the reconnect, order is preserved again
            await pump(a, b2, 500, start=10_000)

            def tail() -> list[int]:
                assert b2 is not None
                return [m.index for m in b2.received[1] if m.index >= 10_000]
            await wait_until(lambda: len(tail()) == 500, what="500 more")
            assert tail() == list(range(10_000, 10_500))
        finally:
            await a.t.stop()
            if b2 is not None:
                await b2.t.stop()
    run(main())


def test_queue_full_drops_and_reports_unreachable(tmp_path: Path) -> None:
    async def main() -> None:
        # peer that does not listen; a long grace so only the queue bound applies
        a = await Node(1, str(tmp_path / "a"), unreachable_after=60.0,
                       max_queue_messages=10).start()
        try:
            a.t.add_peer(2, [f"http://127.0.0.1:{free_port()}"])
            a.t.send([app(1, 2, i) for i in range(10)])
            assert a.unreachable == []
            a.t.send([app(1, 2, i) for i in range(10, 13)])
            assert a.unreachable == []  # reported from the loop, not from inside send()
            await wait_until(lambda: a.unreachable == [2])  # once per send call
            assert a.t.stats()["etcd_network_peer_sent_failures_total"]["2"] == 3
        finally:
            await a.t.stop()
    run(main())


def test_queue_full_while_connected(tmp_path: Path) -> None:
    async def main() -> None:
        a = await Node(1, str(tmp_path / "a")).start()
        b = await Node(2, str(tmp_path / "b")).start()
        connect([a, b])
        try:
            await wait_active([a, b])
            # one send of 5000 within one loop iteration: 4096 fit (etcd's stream buffer)
            a.t.send([app(1, 2, i) for i in range(5000)])
            await wait_until(lambda: a.unreachable == [2])
            assert a.t.stats()["etcd_network_peer_sent_failures_total"]["2"] == 904
            await wait_until(lambda: b.count == 4096)
            assert [m.index for m in b.received[1]] == list(range(4096))
        finally:
            await a.t.stop()
            await b.t.stop()
    run(main())


def test_unknown_peer_and_zero_grace(tmp_path: Path) -> None:
    async def main() -> None:
        a = await Node(1, str(tmp_path / "a"), unreachable_after=0.0).start()
        try:
            a.t.send([app(1, 77, 0)])  # unknown target: ignored
            a.t.add_peer(2, [f"http://127.0.0.1:{free_port()}"])
            a.t.send([app(1, 2, 0), app(1, 2, 1)])
            await wait_until(lambda: a.unreachable == [2])
            assert a.t.stats()["etcd_network_peer_sent_failures_total"]["2"] == 2
            with pytest.raises(ValueError):
                a.t.add_peer(1, [a.url])
            with pytest.raises(ValueError):
                a.t.add_peer(3, ["https://127.0.0.1:1"])
        finally:
            await a.t.stop()
    run(main())


def test_update_peer_switches_url(tmp_path: Path) -> None:
    async def main() -> None:
        a = await Node(1, str(tmp_path / "a"), unreachable_after=60.0).start()
        b = await Node(2, str(tmp_path / "b")).start()
        try:
            b.t.add_peer(1, [a.url])
            a.t.add_peer(2, [f"http://127.0.0.1:{free_port()}"])  # wrong address first
            a.t.send([app(1, 2, 0)])
            a.t.update_peer(2, [b.url])
            await wait_until(lambda: b.count == 1, what="delivery after update_peer")
            a.t.remove_peer(2)
            assert a.t.active_since(2) is None
            a.t.send([app(1, 2, 1)])  # removed: ignored
            assert "2" not in a.t.stats()["etcd_network_peer_sent_bytes_total"]
        finally:
            await a.t.stop()
            await b.t.stop()
    run(main())


def _write_random(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_snapshot_transfer(tmp_path: Path) -> None:
    async def main() -> None:
        a = await Node(1, str(tmp_path / "a")).start()
        b = await Node(2, str(tmp_path / "b")).start()
        connect([a, b])
        try:
            src = tmp_path / "db"
            digest = _write_random(src, 5 * 1024 * 1024 + 12345)
            ok = await a.t.send_snapshot(2, snap_msg(1, 2, 0x42), str(src))
            assert ok
            [(header, path)] = b.snapshots
            assert header.from_id == 1 and header.size == src.stat().st_size
            assert header.message.type == MessageType.MsgSnap
            assert header.message.snapshot is not None
            assert header.message.snapshot.metadata.index == 0x42
            assert header.sha256.hex() == digest
            assert path == str(tmp_path / "b" / "0000000000000042.snap.db")
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
            assert os.listdir(tmp_path / "b") == ["0000000000000042.snap.db"]
            assert a.t.stats()["etcd_network_snapshot_send_success"]["2"] == 1
            assert b.t.stats()["etcd_network_snapshot_receive_success"]["1"] == 1
            # an empty file works too
            (tmp_path / "empty").write_bytes(b"")
            assert await a.t.send_snapshot(2, snap_msg(1, 2, 0x43), str(tmp_path / "empty"))
            assert b.snapshots[-1][0].size == 0
        finally:
            await a.t.stop()
            await b.t.stop()
    run(main())


def test_snapshot_refused_when_install_fails_or_peer_down(tmp_path: Path) -> None:
    async def refuse(header: SnapshotHeader, path: str) -> None:
        raise RuntimeError("disk full")

    async def main() -> None:
        a = await Node(1, str(tmp_path / "a")).start()
        b = await Node(2, str(tmp_path / "b"), on_snapshot=refuse).start()
        connect([a, b])
        src = tmp_path / "db"
        _write_random(src, 100_000)
        try:
            assert not await a.t.send_snapshot(2, snap_msg(1, 2, 5), str(src))
            assert a.t.stats()["etcd_network_snapshot_send_failures"]["2"] == 1
            await b.t.stop()
            assert not await a.t.send_snapshot(2, snap_msg(1, 2, 5), str(src))
            assert not await a.t.send_snapshot(3, snap_msg(1, 3, 5), str(src))  # unknown peer
        finally:
            await a.t.stop()
            await b.t.stop()
    run(main())


async def _raw_snapshot(url: str, frames: list[bytes], *, from_id: int = 1, to_id: int = 2,
                        cluster: int = CLUSTER) -> wire.SnapAck | None:
    """Speak the snapshot protocol by hand; returns the ack (None if the peer just closed)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(Handshake(ConnKind.SNAPSHOT, cluster, from_id, to_id).encode())
        dec = FrameDecoder()
        frames_in: list[tuple[int, bytes]] = []
        while not frames_in:
            data = await reader.read(65536)
            assert data, "closed before the handshake reply"
            frames_in += dec.feed(data)
        assert wire.HandshakeReply.decode(*frames_in.pop(0)).ok
        for f in frames:
            writer.write(f)
        await writer.drain()
        while not frames_in:
            data = await reader.read(65536)
            if not data:
                return None
            frames_in += dec.feed(data)
        return wire.SnapAck.decode(*frames_in[0])
    finally:
        writer.close()


def test_corrupted_snapshot_rejected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.transport")
    from conch.raft.codec import encode_message

    async def main() -> None:
        b = await Node(2, str(tmp_path / "b")).start()
        b.t.add_peer(1, ["http://127.0.0.1:1"])
        try:
            data = os.urandom(3 * 1024 * 1024)
            good = hashlib.sha256(data).digest()
            header = wire.frame(FrameType.SNAP_HEADER, encode_message(snap_msg(1, 2, 7)))
            chunks = [wire.frame(FrameType.SNAP_CHUNK, data[i:i + 65536])
                      for i in range(0, len(data), 65536)]
            flipped = bytearray(data[:65536])
            flipped[100] ^= 1
            bad_chunks = [wire.frame(FrameType.SNAP_CHUNK, bytes(flipped))] + chunks[1:]
            # a bit flipped in transit
            ack = await _raw_snapshot(b.url, [header, *bad_chunks,
                                              SnapTrailer(len(data), good).encode()])
            assert ack is not None and not ack.ok and ack.reason == "SHA-256 mismatch"
            # a truncated body
            ack = await _raw_snapshot(b.url, [header, *chunks[:-1],
                                              SnapTrailer(len(data), good).encode()])
            assert ack is not None and not ack.ok and "size mismatch" in ack.reason
            # a connection cut before the trailer
            assert await _raw_snapshot(b.url, [header, *chunks[:3], b"\xff" * 5]) is None
            # not a MsgSnap header
            assert await _raw_snapshot(
                b.url, [wire.frame(FrameType.SNAP_HEADER, encode_message(app(1, 2, 1)))]) is None
            await wait_until(lambda: b.t.stats()["etcd_network_snapshot_receive_failures"]
                             ["1"] == 3, what="failures counted")
            await wait_until(lambda: os.listdir(tmp_path / "b") == [], what="temp files removed")
            assert b.snapshots == []
            assert any("rejected snapshot from member 1 (index 7): SHA-256 mismatch"
                       in r.getMessage() for r in caplog.records)
            # and the intact one is accepted
            ack = await _raw_snapshot(b.url, [header, *chunks,
                                              SnapTrailer(len(data), good).encode()])
            assert ack is not None and ack.ok
            [(h, path)] = b.snapshots
            assert Path(path).read_bytes() == data
        finally:
            await b.t.stop()
    run(main())


async def _raw_stream(url: str, from_id: int, to_id: int) -> tuple[asyncio.StreamReader,
                                                                   asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(Handshake(ConnKind.STREAM, CLUSTER, from_id, to_id).encode())
    head = await reader.readexactly(wire.HEADER_SIZE)
    n, t = wire.HEADER.unpack(head)
    assert wire.HandshakeReply.decode(t, await reader.readexactly(n)).ok
    return reader, writer


def test_new_stream_replaces_old_and_silent_client_times_out(tmp_path: Path) -> None:
    from conch.raft.codec import encode_message

    async def main() -> None:
        b = await Node(2, str(tmp_path / "b"), handshake_timeout=0.1).start()
        b.t.add_peer(1, ["http://127.0.0.1:1"])
        try:
            r1, w1 = await _raw_stream(b.url, 1, 2)
            w1.write(wire.frame(FrameType.MESSAGE, encode_message(app(1, 2, 1))))
            await wait_until(lambda: b.count == 1)
            r2, w2 = await _raw_stream(b.url, 1, 2)
            assert await r1.read() == b""  # the old stream was closed by b
            w2.write(wire.frame(FrameType.MESSAGE, encode_message(app(1, 2, 2))))
            await wait_until(lambda: b.count == 2)
            # a frame that is not a raft message ends the stream
            w2.write(wire.frame(FrameType.MESSAGE, b"\xff\xff\xff"))
            assert await r2.read() == b""
            w1.close()
            w2.close()
            # a client that never sends a handshake is dropped after handshake_timeout
            host, port = b.url.removeprefix("http://").rsplit(":", 1)
            r3, w3 = await asyncio.open_connection(host, int(port))
            with contextlib.suppress(ConnectionResetError):
                assert await r3.read() == b""
            w3.close()
        finally:
            await b.t.stop()
    run(main())
