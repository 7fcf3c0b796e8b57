"""The asyncio driver of the peer transport (see the package docstring for the contract)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, cast
from urllib.parse import urlsplit

from conch.proto.raftpb import raft_pb2 as pb
from conch.raft.codec import message_from_pb, message_to_pb
from conch.raft.types import Message, MessageType
from conch.transport import wire
from conch.transport.peer import DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, Backoff, PeerLink
from conch.transport.wire import (
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
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

OutMessage = Message | pb.Message

_monotonic = time.monotonic

#: bytes the kernel/asyncio may buffer for one outbound stream before we stop writing and let
#: the per-peer queue absorb (and, when full, drop) messages.
WRITE_BUFFER_HIGH = 1024 * 1024
SNAPSHOT_CHUNK = 1024 * 1024
#: received snapshot bytes buffered in memory before the socket is paused.
SNAPSHOT_BUFFER_HIGH = 16 * 1024 * 1024
SNAPSHOT_BUFFER_LOW = 4 * 1024 * 1024


def parse_peer_url(url: str) -> tuple[str, int]:
    """``http://host:port`` -> (host, port). TLS peer URLs are not supported yet."""
    u = urlsplit(url)
    if u.scheme != "http":
        raise ValueError(f"peer URL {url!r}: only http:// is supported (peer TLS is not"
                         " implemented)")
    try:
        port = u.port
    except ValueError as e:
        raise ValueError(f"peer URL {url!r}: {e}") from None
    if not u.hostname or port is None:
        raise ValueError(f"peer URL {url!r} needs a host and a port")
    return u.hostname, port


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    """What arrived with a snapshot file: the sender and its MsgSnap raft message."""

    from_id: int
    message: Message
    size: int
    sha256: bytes


class _Counters:
    __slots__ = ("sent_bytes", "sent_messages", "sent_failures", "received_bytes",
                 "received_messages", "snap_send_ok", "snap_send_fail", "snap_recv_ok",
                 "snap_recv_fail")

    def __init__(self) -> None:
        self.sent_bytes = 0
        self.sent_messages = 0
        self.sent_failures = 0
        self.received_bytes = 0
        self.received_messages = 0
        self.snap_send_ok = 0
        self.snap_send_fail = 0
        self.snap_recv_ok = 0
        self.snap_recv_fail = 0


class _Rejected(Exception):
    def __init__(self, reply: HandshakeReply) -> None:
        super().__init__(reply.reason)
        self.reply = reply


def _tune_socket(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            # unacknowledged data for this long kills the connection (a vanished host)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 10_000)


# --- outbound stream ------------------------------------------------------------------------


class _Outbound(asyncio.Protocol):
    """Dialer side of a stream: writes the handshake, reads the reply, then only writes."""

    def __init__(self, handshake: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.handshake = handshake
        self.decoder = FrameDecoder(MAX_HANDSHAKE_FRAME)
        self.reply: asyncio.Future[HandshakeReply] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.WriteTransport | None = None
        self.paused = False
        self.on_lost: Callable[[_Outbound], None] | None = None
        self.on_resume: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's classes (duck-typed instead)
        wt = self.transport = cast(asyncio.WriteTransport, transport)
        _tune_socket(transport)
        wt.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        wt.write(self.handshake)

    def data_received(self, data: bytes) -> None:
        if self.reply.done():
            return  # the listener never writes after its reply
        try:
            frames = self.decoder.feed(data)
            if frames:
                self.reply.set_result(HandshakeReply.decode(*frames[0]))
        except WireError as e:
            self.reply.set_exception(e)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(ConnectionError(
                f"connection closed before the handshake reply ({exc or 'EOF'})"))
        if not self.lost.done():
            self.lost.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()


class _Peer:
    __slots__ = ("id", "urls", "url_index", "link", "proto", "flush_scheduled", "task",
                 "counters", "last_error", "dropping")

    def __init__(self, peer_id: int, urls: list[str], link: PeerLink, counters: _Counters) -> None:
        self.id = peer_id
        self.urls = list(urls)
        self.url_index = 0
        self.link = link
        self.proto: _Outbound | None = None
        self.flush_scheduled = False
        self.task: asyncio.Task[None] | None = None
        self.counters = counters
        self.last_error = ""
        self.dropping = False

    def url(self) -> str:
        return self.urls[self.url_index % len(self.urls)]


# --- inbound connections ---------------------------------------------------------------------

_HANDSHAKING, _STREAM, _SNAPSHOT, _CLOSED = range(4)


class _Inbound(asyncio.Protocol):
    """Listener side of a connection: validates the handshake, then reads messages (stream)
    or a snapshot file (snapshot)."""

    def __init__(self, owner: Transport) -> None:
        self.owner = owner
        self.decoder = FrameDecoder(MAX_HANDSHAKE_FRAME)
        self.state = _HANDSHAKING
        self.peer_id = 0
        self.peername = "?"
        self.transport: asyncio.Transport | None = None
        self.counters: _Counters | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.snap: _SnapshotIn | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop: duck-typed, see above
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peername = f"{peer[0]}:{peer[1]}"
        _tune_socket(transport)
        self.owner._inbound.add(self)
        self.timer = asyncio.get_running_loop().call_later(
            self.owner._handshake_timeout, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if self.timer is not None:
            self.timer.cancel()
        self.owner._inbound.discard(self)
        if self.owner._streams_in.get(self.peer_id) is self:
            del self.owner._streams_in[self.peer_id]
        if self.snap is not None:
            self.snap.connection_lost()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except WireError as e:
            if self.state == _HANDSHAKING:
                self._refuse_garbage(f"not a conch peer handshake ({e})")
            else:
                self._protocol_error(str(e))
            return
        if self.state == _STREAM:
            self._messages(frames, 0)
            return
        for i, (ftype, payload) in enumerate(frames):
            st = self.state
            if st == _HANDSHAKING:
                self._handshake(ftype, payload)
            elif st == _STREAM:
                self._messages(frames, i)
                return
            elif st == _SNAPSHOT:
                assert self.snap is not None
                try:
                    self.snap.on_frame(ftype, payload)
                except WireError as e:
                    self._protocol_error(str(e))
                    return
            else:
                return

    # internals

    def _messages(self, frames: list[tuple[int, bytes]], start: int) -> None:
        c = self.counters
        assert c is not None
        deliver = self.owner._on_message
        parse = pb.Message.FromString
        for i in range(start, len(frames)):
            ftype, payload = frames[i]
            if ftype != FrameType.MESSAGE:
                self._protocol_error(f"unexpected frame type {ftype} on a message stream")
                return
            try:
                msg = message_from_pb(parse(payload))
            except Exception as e:  # protobuf DecodeError and friends
                self._protocol_error(f"undecodable raft message: {e}")
                return
            c.received_messages += 1
            c.received_bytes += len(payload)
            try:
                deliver(msg)
            except Exception:
                self.owner._log.exception("on_message failed for a message from %x",
                                          self.peer_id)
            if self.state != _STREAM:  # the callback stopped the transport
                return

    def _handshake(self, ftype: int, payload: bytes) -> None:
        owner = self.owner
        transport = self.transport
        assert transport is not None
        try:
            hs = Handshake.decode(ftype, payload)
        except WireError as e:
            self._refuse_garbage(str(e))
            return
        reply = wire.check_handshake(
            hs, cluster_id=owner.cluster_id, member_id=owner.member_id,
            is_removed=hs.from_id in owner._removed, is_known=hs.from_id in owner._peers)
        transport.write(reply.encode())
        if reply.ok and hs.kind == ConnKind.MEMBERS:
            info = owner._members_info() if owner._members_info is not None else b"[]"
            transport.write(wire.frame(FrameType.MEMBERS, info))
            self.state = _CLOSED
            transport.close()
            return
        if not reply.ok:
            self.state = _CLOSED
            owner._log_rejection(
                f"rejected connection from member {hs.from_id:x}: {reply.reason}"
                f" (from {self.peername})", (hs.from_id, reply.status))
            transport.close()
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.peer_id = hs.from_id
        self.counters = owner._counters_for(hs.from_id)
        self.decoder.max_frame = MAX_FRAME
        if hs.kind == ConnKind.STREAM:
            self.state = _STREAM
            old = owner._streams_in.get(hs.from_id)
            owner._streams_in[hs.from_id] = self
            if old is not None and old.transport is not None:
                old.transport.close()  # the peer redialed; its old stream is dead or stale
        else:
            self.state = _SNAPSHOT
            self.snap = _SnapshotIn(owner, self, hs.from_id)

    def _refuse_garbage(self, why: str) -> None:
        owner = self.owner
        self.state = _CLOSED
        owner._log_rejection(f"rejected connection from {self.peername}: {why}", self.peername)
        if self.transport is not None:
            self.transport.write(HandshakeReply(Status.BAD_HANDSHAKE, owner.cluster_id,
                                                owner.member_id, why).encode())
            self.transport.close()

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.state == _HANDSHAKING and self.transport is not None:
            self.owner._log.debug("closing connection from %s: no handshake", self.peername)
            self.state = _CLOSED
            self.transport.abort()

    def _protocol_error(self, why: str) -> None:
        self.owner._log.warning("closing peer connection from %s (member %x): %s",
                                self.peername, self.peer_id, why)
        self.state = _CLOSED
        if self.transport is not None:
            self.transport.abort()


_LOST = object()


class _SnapshotIn:
    """Receives one snapshot file: frames are queued to a task that writes them to a temp file
    on a thread (hashing as it goes), verifies size and SHA-256, fsyncs, renames it to
    ``<snap_dir>/<index:016x>.snap.db`` and hands it to ``on_snapshot``; then acks."""

    def __init__(self, owner: Transport, conn: _Inbound, from_id: int) -> None:
        self.owner = owner
        self.conn = conn
        self.from_id = from_id
        self.state = SnapshotReceiverState()
        self.queue: asyncio.Queue[bytes | SnapTrailer | object] = asyncio.Queue()
        self.buffered = 0
        self.paused = False
        self.message: Message | None = None
        self.task: asyncio.Task[None] | None = None

    def on_frame(self, ftype: int, payload: bytes) -> None:
        ev = self.state.on_frame(ftype, payload)
        if ev is SnapEvent.CHUNK:
            self.queue.put_nowait(payload)
            self.buffered += len(payload)
            if self.buffered > SNAPSHOT_BUFFER_HIGH and not self.paused:
                self.paused = True
                assert self.conn.transport is not None
                self.conn.transport.pause_reading()
        elif ev is SnapEvent.HEADER:
            try:
                m = message_from_pb(pb.Message.FromString(payload))
            except Exception as e:
                raise WireError(f"undecodable snapshot message: {e}") from None
            if m.type != MessageType.MsgSnap or m.snapshot is None:
                raise WireError(f"snapshot header is a {MessageType(m.type).name}, not MsgSnap")
            self.message = m
            self.task = asyncio.get_running_loop().create_task(self._receive())
            self.owner._tasks.add(self.task)
            self.task.add_done_callback(self.owner._tasks.discard)
        else:
            self.queue.put_nowait(SnapTrailer.decode(payload))

    def connection_lost(self) -> None:
        if self.task is not None and not self.task.done():
            self.queue.put_nowait(_LOST)

    async def _receive(self) -> None:
        try:
            await self._receive_file()
        except Exception as e:
            self.owner._counters_for(self.from_id).snap_recv_fail += 1
            self.owner._log.exception("receiving a snapshot from member %x failed", self.from_id)
            self._ack(SnapAck(False, f"receiver error: {e}"))

    async def _receive_file(self) -> None:
        owner = self.owner
        log = owner._log
        msg = self.message
        assert msg is not None and msg.snapshot is not None
        index = msg.snapshot.metadata.index
        snap_dir = owner._snap_dir
        final = os.path.join(snap_dir, f"{index:016x}.snap.db")
        fd, tmp = await asyncio.to_thread(
            tempfile.mkstemp, dir=snap_dir, prefix=f"{index:016x}.snap.db.", suffix=".part")
        f = os.fdopen(fd, "wb")
        h = hashlib.sha256()
        size = 0
        done = False
        counters = owner._counters_for(self.from_id)
        started = _monotonic()
        try:
            while True:
                items = [await self.queue.get()]
                while not self.queue.empty():
                    items.append(self.queue.get_nowait())
                chunks: list[bytes] = []
                tail: object = None
                for it in items:
                    if isinstance(it, bytes):
                        chunks.append(it)
                    else:
                        tail = it
                        break
                if chunks:
                    n = sum(len(c) for c in chunks)
                    await asyncio.to_thread(_write_hashed, f, h, chunks)
                    size += n
                    self.buffered -= n
                    if self.paused and self.buffered < SNAPSHOT_BUFFER_LOW:
                        self.paused = False
                        if self.conn.transport is not None:
                            self.conn.transport.resume_reading()
                if tail is None:
                    continue
                if not isinstance(tail, SnapTrailer):
                    counters.snap_recv_fail += 1
                    log.warning("snapshot transfer from member %x (index %d) was cut off after"
                                " %d bytes", self.from_id, index, size)
                    return
                if tail.size != size or tail.sha256 != h.digest():
                    counters.snap_recv_fail += 1
                    why = (f"size mismatch (got {size} bytes, sender says {tail.size})"
                           if tail.size != size else "SHA-256 mismatch")
                    log.error("rejected snapshot from member %x (index %d): %s",
                              self.from_id, index, why)
                    self._ack(SnapAck(False, why))
                    return
                await asyncio.to_thread(_finish_file, f, tmp, final, snap_dir)
                done = True
                header = SnapshotHeader(self.from_id, msg, size, tail.sha256)
                try:
                    await owner._on_snapshot(header, final)
                except Exception as e:
                    counters.snap_recv_fail += 1
                    log.exception("installing snapshot from member %x (index %d) failed",
                                  self.from_id, index)
                    self._ack(SnapAck(False, f"receiver failed to install: {e}"))
                    return
                counters.snap_recv_ok += 1
                counters.received_bytes += size
                log.info("received database snapshot from member %x (index %d, %d bytes, %.3fs)",
                         self.from_id, index, size, _monotonic() - started)
                self._ack(SnapAck(True))
                return
        finally:
            if not done:
                await asyncio.shield(asyncio.to_thread(_discard_file, f, tmp))

    def _ack(self, ack: SnapAck) -> None:
        t = self.conn.transport
        if t is not None and not t.is_closing():
            t.write(ack.encode())
            t.close()


def _write_hashed(f: IO[bytes], h: Any, chunks: list[bytes]) -> None:
    for c in chunks:
        h.update(c)
        f.write(c)


def _finish_file(f: IO[bytes], tmp: str, final: str, directory: str) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, final)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _discard_file(f: IO[bytes], tmp: str) -> None:
    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _read_hashed(f: IO[bytes], h: Any, n: int) -> bytes:
    data = f.read(n)
    if data:
        h.update(data)
    return data


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    head = await reader.readexactly(wire.HEADER_SIZE)
    n, ftype = wire.HEADER.unpack(head)
    if n > limit:
        raise WireError(f"frame of {n} bytes exceeds the limit of {limit}")
    return ftype, await reader.readexactly(n)


def _encode(m: OutMessage) -> bytes:
    if isinstance(m, Message):
        return message_to_pb(m).SerializeToString()
    return m.SerializeToString()


# --- the transport ---------------------------------------------------------------------------


class Transport:
    """Member-to-member raft traffic. See ``conch.transport`` for the contract."""

    def __init__(
        self,
        *,
        member_id: int,
        cluster_id: int,
        listen_urls: list[str],
        snap_dir: str,
        on_message: Callable[[Message], None],
        on_snapshot: Callable[[SnapshotHeader, str], Awaitable[None]],
        on_unreachable: Callable[[int], None],
        logger: logging.Logger | None = None,
        on_removed: Callable[[], None] | None = None,
        members_info: Callable[[], bytes] | None = None,
        unreachable_after: float = 0.5,
        dial_timeout: float = 1.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
        max_queue_messages: int = DEFAULT_MAX_MESSAGES,
        max_queue_bytes: int = DEFAULT_MAX_BYTES,
        snapshot_timeout: float = 60.0,
        handshake_timeout: float = 5.0,
    ) -> None:
        for u in listen_urls:
            parse_peer_url(u)
        self.member_id = member_id
        self.cluster_id = cluster_id
        self._listen_urls = list(listen_urls)
        self._snap_dir = snap_dir
        self._on_message = on_message
        self._on_snapshot = on_snapshot
        self._on_unreachable = on_unreachable
        # Called when a peer refuses us because we were removed from the cluster (etcd's
        # peers answer such a member with "410 Gone", and it stops itself).
        self._on_removed = on_removed
        self._members_info = members_info
        self._log = logger or logging.getLogger("conch.transport")
        self._unreachable_after = unreachable_after
        self._dial_timeout = dial_timeout
        self._backoff = (backoff_base, backoff_cap)
        self._max_queue = (max_queue_messages, max_queue_bytes)
        self._snapshot_timeout = snapshot_timeout
        self._handshake_timeout = handshake_timeout

        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._peers: dict[int, _Peer] = {}
        self._removed: set[int] = set()
        self._counters: dict[int, _Counters] = {}
        self._inbound: set[_Inbound] = set()
        self._streams_in: dict[int, _Inbound] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._snap_writers: set[asyncio.StreamWriter] = set()
        self._rejection_logged: dict[object, float] = {}
        self._unknown_target_drops = 0
        self._started = False
        self._stopped = False

    # --- lifecycle ---

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("transport already started")
        self._started = True
        self._loop = loop = asyncio.get_running_loop()
        os.makedirs(self._snap_dir, exist_ok=True)
        try:
            for url in self._listen_urls:
                host, port = parse_peer_url(url)
                server = await loop.create_server(lambda: _Inbound(self), host, port,
                                                  reuse_address=True)
                self._servers.append(server)
        except BaseException:
            for s in self._servers:
                s.close()
            raise
        now = _monotonic()
        for p in self._peers.values():
            p.link.disconnected(now)
            p.link.down_since = now  # the grace period starts when we start dialing
            self._start_dialer(p)
        self._log.info("peer transport of member %x listening on %s", self.member_id,
                       ", ".join(self.listen_urls))

    @property
    def listen_urls(self) -> list[str]:
        """The bound URLs (ports resolved, so ``http://127.0.0.1:0`` shows its real port)."""
        out = []
        for s in self._servers:
            for sock in s.sockets:
                addr = sock.getsockname()
                host = addr[0]
                if ":" in host:
                    host = f"[{host}]"
                out.append(f"http://{host}:{addr[1]}")
        return out or list(self._listen_urls)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for s in self._servers:
            s.close()
        for p in self._peers.values():
            self._stop_peer(p)
        for conn in list(self._inbound):
            conn.state = _CLOSED
            if conn.transport is not None:
                conn.transport.abort()
        for w in list(self._snap_writers):
            w.transport.abort()
        tasks = [p.task for p in self._peers.values() if p.task is not None]
        tasks += list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for s in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 1.0)

    # --- membership ---

    def add_peer(self, peer_id: int, urls: list[str]) -> None:
        if peer_id == self.member_id:
            raise ValueError("a member is not its own peer")
        if not urls:
            raise ValueError(f"peer {peer_id:x} needs at least one URL")
        for u in urls:
            parse_peer_url(u)
        if peer_id in self._peers:
            self.update_peer(peer_id, urls)
            return
        self._removed.discard(peer_id)
        link = PeerLink(_monotonic(), unreachable_after=self._unreachable_after,
                        max_messages=self._max_queue[0], max_bytes=self._max_queue[1])
        p = _Peer(peer_id, urls, link, self._counters_for(peer_id))
        self._peers[peer_id] = p
        if self._started and not self._stopped:
            self._start_dialer(p)

    def update_peer(self, peer_id: int, urls: list[str]) -> None:
        p = self._peers.get(peer_id)
        if p is None:
            raise KeyError(f"unknown peer {peer_id:x}")
        for u in urls:
            parse_peer_url(u)
        if list(urls) == p.urls:
            return
        p.urls = list(urls)
        p.url_index = 0
        if self._started and not self._stopped:
            self._stop_peer(p)
            self._start_dialer(p)

    def remove_peer(self, peer_id: int) -> None:
        p = self._peers.pop(peer_id, None)
        self._removed.add(peer_id)
        self._counters.pop(peer_id, None)
        if p is not None:
            self._stop_peer(p)
            p.link.queue.clear()
        conn = self._streams_in.pop(peer_id, None)
        if conn is not None and conn.transport is not None:
            conn.state = _CLOSED
            conn.transport.close()

    def active_since(self, peer_id: int) -> float | None:
        """Monotonic time (``time.monotonic()``) since which our stream to the peer has been up,
        or None while it is down."""
        p = self._peers.get(peer_id)
        return None if p is None else p.link.active_since

    # --- sending ---

    def send(self, messages: Iterable[OutMessage]) -> None:
        """Queue messages for their peers (``m.to``); never blocks. Call on the event loop."""
        if self._stopped:
            return
        now = _monotonic()
        peers = self._peers
        failed: list[_Peer] | None = None
        for m in messages:
            p = peers.get(m.to)
            if p is None:
                if m.to != self.member_id:
                    self._unknown_target_drops += 1
                    self._log.debug("dropped message to unknown peer %x", m.to)
                continue
            queued, dropped = p.link.offer(_encode(m), now)
            if queued:
                if not p.flush_scheduled and p.proto is not None:
                    p.flush_scheduled = True
                    assert self._loop is not None
                    self._loop.call_soon(self._flush, p)
            else:
                p.counters.sent_failures += dropped
                if failed is None:
                    failed = [p]
                elif p not in failed:
                    failed.append(p)
        if failed:
            for p in failed:
                if not p.dropping:
                    p.dropping = True
                    why = ("sending buffer is full" if p.link.up
                           else "the stream to the peer is down")
                    self._log.warning("dropping raft messages to member %x: %s", p.id, why)
            # reported from the loop, never from inside send(): the caller may be in the middle
            # of handling a Ready when it sends
            ids = [p.id for p in failed]
            if self._loop is not None:
                self._loop.call_soon(self._report_unreachable, ids)
            else:
                self._report_unreachable(ids)

    def _report_unreachable(self, ids: list[int]) -> None:
        for pid in ids:
            if pid in self._peers:
                self._on_unreachable(pid)

    def _flush(self, p: _Peer) -> None:
        p.flush_scheduled = False
        proto = p.proto
        if proto is None or proto.paused or proto.transport is None \
                or proto.transport.is_closing():
            return
        data, n, nbytes = p.link.queue.take()
        if n:
            proto.transport.write(data)
            c = p.counters
            c.sent_messages += n
            c.sent_bytes += nbytes
            if p.dropping and not proto.paused:
                p.dropping = False

    # --- stream dialer ---

    def _start_dialer(self, p: _Peer) -> None:
        assert self._loop is not None
        p.task = self._loop.create_task(self._dial_loop(p), name=f"peer-{p.id:x}")

    def _stop_peer(self, p: _Peer) -> None:
        if p.task is not None:
            p.task.cancel()
            p.task = None
        proto = p.proto
        if proto is not None:
            proto.on_lost = None
            if proto.transport is not None:
                proto.transport.abort()
            self._detach(p)

    def _detach(self, p: _Peer) -> None:
        p.proto = None
        p.flush_scheduled = False
        p.link.disconnected(_monotonic())

    def _on_stream_lost(self, p: _Peer, proto: _Outbound) -> None:
        if p.proto is not proto:
            return
        self._detach(p)
        if not self._stopped:
            self._log.warning("lost TCP streaming connection with remote peer %x", p.id)
            self._on_unreachable(p.id)

    async def _dial_loop(self, p: _Peer) -> None:
        backoff = Backoff(*self._backoff)
        while True:
            url = p.url()
            try:
                proto = await self._dial(p, url)
            except _Rejected as r:
                self._note_failure(p, f"member {p.id:x} at {url} rejected our connection: "
                                   + self._rejection_text(p, r.reply), logging.ERROR)
                if r.reply.status == Status.REMOVED and self._on_removed is not None:
                    self._on_removed()
                await asyncio.sleep(backoff.next())
                continue
            except (OSError, TimeoutError, WireError) as e:
                p.url_index += 1
                self._note_failure(p, f"failed to dial member {p.id:x} at {url}: "
                                   f"{e or type(e).__name__}", logging.WARNING)
                await asyncio.sleep(backoff.next())
                continue
            except Exception:  # a bug must not end the redial loop for good
                self._log.exception("dialing member %x at %s failed", p.id, url)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            p.last_error = ""
            p.proto = proto
            proto.on_lost = lambda pr: self._on_stream_lost(p, pr)
            proto.on_resume = lambda: self._schedule_flush(p)
            p.link.connected(_monotonic())
            self._log.info("peer %x became active (%s)", p.id, url)
            self._flush(p)
            try:
                await proto.lost
            finally:
                if p.proto is proto:
                    proto.on_lost = None
                    if proto.transport is not None:
                        proto.transport.abort()
                    self._detach(p)
            await asyncio.sleep(backoff.next())

    def _schedule_flush(self, p: _Peer) -> None:
        if not p.flush_scheduled and p.proto is not None and self._loop is not None:
            p.flush_scheduled = True
            self._loop.call_soon(self._flush, p)

    async def _dial(self, p: _Peer, url: str) -> _Outbound:
        host, port = parse_peer_url(url)
        loop = asyncio.get_running_loop()
        hs = Handshake(ConnKind.STREAM, self.cluster_id, self.member_id, p.id).encode()
        transport, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Outbound(hs, loop), host, port), self._dial_timeout)
        try:
            reply = await asyncio.wait_for(proto.reply, self._dial_timeout)
        except BaseException:
            transport.abort()
            raise
        if not reply.ok:
            transport.abort()
            raise _Rejected(reply)
        return proto

    def _rejection_text(self, p: _Peer, reply: HandshakeReply) -> str:
        if reply.status == Status.CLUSTER_MISMATCH:
            return (f"cluster ID mismatch (local {self.cluster_id:x},"
                    f" remote {reply.cluster_id:x})")
        if reply.status == Status.MEMBER_MISMATCH:
            return (f"member ID mismatch (the peer there is member {reply.member_id:x},"
                    f" expected {p.id:x})")
        return reply.reason or f"status {reply.status}"

    def _note_failure(self, p: _Peer, text: str, level: int) -> None:
        """Log a dial failure once per distinct reason (retries of the same one at debug)."""
        if text != p.last_error:
            p.last_error = text
            self._log.log(level, text)
        else:
            self._log.debug(text)

    def _log_rejection(self, text: str, key: object) -> None:
        now = _monotonic()
        last = self._rejection_logged.get(key)
        if last is None or now - last >= 30.0:
            self._rejection_logged[key] = now
            self._log.error(text)
        else:
            self._log.debug(text)

    def _counters_for(self, peer_id: int) -> _Counters:
        c = self._counters.get(peer_id)
        if c is None:
            c = self._counters[peer_id] = _Counters()
        return c

    # --- snapshots ---

    async def send_snapshot(self, peer_id: int, message: OutMessage, snapshot_path: str) -> bool:
        """Stream ``snapshot_path`` with its MsgSnap to the peer on a separate connection.
        True once the receiver verified, stored and handed it to its member."""
        p = self._peers.get(peer_id)
        if p is None:
            self._log.warning("cannot send snapshot to unknown peer %x", peer_id)
            return False
        payload = _encode(message)
        url = p.url()
        started = _monotonic()
        writer: asyncio.StreamWriter | None = None
        f: IO[bytes] | None = None
        counters = p.counters
        try:
            host, port = parse_peer_url(url)
            reader, w = await asyncio.wait_for(asyncio.open_connection(host, port),
                                               self._dial_timeout)
            writer = w
            self._snap_writers.add(w)
            w.write(Handshake(ConnKind.SNAPSHOT, self.cluster_id, self.member_id,
                                   peer_id).encode())
            reply = HandshakeReply.decode(*await asyncio.wait_for(
                _read_frame(reader, MAX_HANDSHAKE_FRAME), self._dial_timeout))
            if not reply.ok:
                self._log.error("member %x at %s rejected our snapshot connection: %s",
                                peer_id, url, self._rejection_text(p, reply))
                counters.snap_send_fail += 1
                return False
            w.write(wire.frame(FrameType.SNAP_HEADER, payload))
            f = await asyncio.to_thread(open, snapshot_path, "rb")
            h = hashlib.sha256()
            size = 0
            while True:
                chunk = await asyncio.to_thread(_read_hashed, f, h, SNAPSHOT_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                w.write(wire.HEADER.pack(len(chunk), FrameType.SNAP_CHUNK))
                w.write(chunk)
                await asyncio.wait_for(w.drain(), self._snapshot_timeout)
            w.write(SnapTrailer(size, h.digest()).encode())
            await asyncio.wait_for(w.drain(), self._snapshot_timeout)
            ack = SnapAck.decode(*await asyncio.wait_for(_read_frame(reader, 65536),
                                                         self._snapshot_timeout))
            if not ack.ok:
                self._log.error("member %x rejected snapshot %s: %s", peer_id, snapshot_path,
                                ack.reason)
                counters.snap_send_fail += 1
                return False
            counters.snap_send_ok += 1
            counters.sent_bytes += size + len(payload)
            self._log.info("sent database snapshot to member %x (%d bytes, %.3fs)", peer_id,
                           size, _monotonic() - started)
            return True
        except (OSError, TimeoutError, EOFError, WireError) as e:
            counters.snap_send_fail += 1
            self._log.warning("failed to send snapshot to member %x at %s: %s", peer_id, url,
                              e or type(e).__name__)
            return False
        finally:
            if f is not None:
                f.close()
            if writer is not None:
                self._snap_writers.discard(writer)
                writer.transport.abort()

    # --- metrics ---

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per peer (label = member id in hex, as etcd's To/From labels)."""
        names = {
            "etcd_network_peer_sent_bytes_total": "sent_bytes",
            "etcd_network_peer_received_bytes_total": "received_bytes",
            "etcd_network_peer_sent_failures_total": "sent_failures",
            "conch_network_peer_sent_messages_total": "sent_messages",
            "conch_network_peer_received_messages_total": "received_messages",
            "etcd_network_snapshot_send_success": "snap_send_ok",
            "etcd_network_snapshot_send_failures": "snap_send_fail",
            "etcd_network_snapshot_receive_success": "snap_recv_ok",
            "etcd_network_snapshot_receive_failures": "snap_recv_fail",
        }
        out: dict[str, dict[str, int]] = {}
        for metric, attr in names.items():
            out[metric] = {f"{pid:x}": getattr(c, attr) for pid, c in self._counters.items()}
        out["conch_network_peer_active"] = {
            f"{pid:x}": int(p.link.up) for pid, p in self._peers.items()}
        return out


async def fetch_members(url: str, timeout: float = 2.0) -> tuple[int, int, bytes]:
    """Ask the member listening at peer URL `url` for (its cluster ID, its member ID, the
    member list as a JSON array). Used by a member joining an existing cluster."""
    host, port = parse_peer_url(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(Handshake(ConnKind.MEMBERS, 0, 0, 0).encode())
        await writer.drain()
        frames: list[tuple[int, bytes]] = []
        for _ in range(2):
            head = await asyncio.wait_for(reader.readexactly(wire.HEADER_SIZE), timeout)
            length, ftype = wire.HEADER.unpack(head)
            if length > MAX_FRAME:
                raise wire.WireError("members frame too large")
            frames.append((ftype, await asyncio.wait_for(reader.readexactly(length), timeout)))
            if ftype == FrameType.HANDSHAKE_REPLY:
                reply = HandshakeReply.decode(ftype, frames[-1][1])
                if not reply.ok:
                    raise wire.WireError(reply.reason or f"refused with status {reply.status}")
        (rt, rp), (mt, mp) = frames
        reply = HandshakeReply.decode(rt, rp)
        if mt != FrameType.MEMBERS:
            raise wire.WireError("expected a MEMBERS frame")
        return reply.cluster_id, reply.member_id, mp
    finally:
        writer.close()
