"""A fault-injecting TCP proxy for the peer links of a conch or etcd cluster.

One :class:`FaultProxy` per member listens on a free loopback port and forwards to that
member's real peer port; the members advertise the proxy as their peer URL, so every peer
connection *into* member X passes X's proxy. Each accepted connection is attributed to the
member that dialed it by peeking at its first bytes (a conch handshake frame, or the
``X-Server-From`` header of etcd's rafthttp request head) before connecting upstream.

Faults are :class:`FaultRules`: rules on *links* (unordered pairs of member IDs) and on whole
members, shared by all proxies of a cluster and applied to both directions of every matching
connection (conch and etcd carry peer traffic on connections dialed by either side, so cutting
A-B stalls A->proxy(B) and B->proxy(A)):

- ``blackhole``: nothing is read from either socket (data stays queued, TCP backs off); on heal
  forwarding resumes and the queued data is delivered late, as after a healed partition.
- ``delay(ms, jitter_ms)``: each chunk is held ms +- jitter before it is forwarded, in order.
- ``drop(p)``: each chunk, with probability p, resets the connection instead (both sides,
  in-flight data lost) -- a TCP-level stand-in for packet loss.

Every proxy runs its own asyncio loop in a daemon thread; all public methods are thread-safe
and synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from devkit.procs import stamp

__all__ = [
    "Effect",
    "FaultProxy",
    "FaultRules",
    "LinkStats",
    "identify",
    "link_key",
]

_HEADER = struct.Struct(">IB")
_HANDSHAKE = struct.Struct(">4sHBQQQ")
_CONCH_MAGIC = b"cnch"
_HANDSHAKE_TYPE = 1
_MAX_HANDSHAKE = 256
_HTTP_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC")

#: how much of a connection's beginning the proxy reads to identify the dialer
PEEK_LIMIT = 16 * 1024
#: how long it waits for those bytes (a silent client is then forwarded as unidentified)
PEEK_TIMEOUT = 2.0
CHUNK = 64 * 1024
#: StreamReader buffer limit: little is read from a socket beyond what is being forwarded
_READ_LIMIT = 16 * 1024
_QUEUE_CHUNKS = 64


# --------------------------------------------------------------------------- identification


def identify(head: bytes) -> tuple[int | None, int | None]:
    """``(source, destination)`` member IDs named by the first bytes of a peer connection.

    A conch handshake frame gives both (``from_id``/``to_id``; 0 means unknown); an HTTP
    request head gives ``X-Server-From`` and ``X-Raft-To`` (hex). Anything else: (None, None).
    """
    if len(head) >= _HEADER.size:
        n, ftype = _HEADER.unpack_from(head)
        if ftype == _HANDSHAKE_TYPE and _HANDSHAKE.size <= n <= _MAX_HANDSHAKE \
                and len(head) >= _HEADER.size + _HANDSHAKE.size:
            magic, _ver, _kind, _cluster, frm, to = _HANDSHAKE.unpack_from(head, _HEADER.size)
            if magic == _CONCH_MAGIC:
                return (frm or None, to or None)
    if head[:4] in _HTTP_METHODS:
        end = head.find(b"\r\n\r\n")
        text = head[: end if end >= 0 else len(head)].decode("latin-1")
        src = dst = None
        for line in text.split("\r\n")[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                continue
            name = name.strip().lower()
            if name == "x-server-from":
                src = _hex_id(value)
            elif name == "x-raft-to":
                dst = _hex_id(value)
        return (src, dst)
    return (None, None)


def _hex_id(text: str) -> int | None:
    try:
        v = int(text.strip(), 16)
    except ValueError:
        return None
    return v or None


def _peek_complete(head: bytes) -> bool:
    """True once ``head`` holds enough to identify the dialer (or never will)."""
    if len(head) >= PEEK_LIMIT:
        return True
    if len(head) < 4:
        return False
    if head[:4] in _HTTP_METHODS:
        return b"\r\n\r\n" in head
    if len(head) < _HEADER.size:
        return False
    n, ftype = _HEADER.unpack_from(head)
    if ftype != _HANDSHAKE_TYPE or n > _MAX_HANDSHAKE:
        return True  # not a conch handshake; nothing more to learn
    return len(head) >= _HEADER.size + int(n)


async def _peek(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Read the connection's first bytes until they identify the dialer, the size cap, EOF or
    the deadline -- whichever comes first. Returns what was read (to be forwarded)."""
    head = b""
    deadline = time.monotonic() + timeout
    while not _peek_complete(head):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            async with asyncio.timeout(remaining):
                data = await reader.read(PEEK_LIMIT - len(head))
        except TimeoutError:
            break
        if not data:
            break
        head += data
    return head


# --------------------------------------------------------------------------- rules


def link_key(a: int | None, b: int | None) -> str:
    """Unordered, printable key of the link between two members (``?`` for unknown)."""
    names = sorted("?" if x is None else f"{x:x}" for x in (a, b))
    return f"{names[0]}~{names[1]}"


@dataclass(frozen=True)
class Effect:
    """What the rules do to one connection right now."""

    blackhole: bool = False
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    drop: float = 0.0
    #: connections stalled by this blackhole are reset when it ends (what was in flight is
    #: lost, as when a partition outlives the TCP connections), instead of resuming
    lossy: bool = False


_NONE = Effect()


@dataclass
class _LinkRule:
    blackhole: bool = False
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    drop: float = 0.0
    lossy: bool = False


class FaultRules:
    """Thread-safe table of faults, shared by the proxies of one cluster.

    Links are unordered pairs of member IDs; ``isolate(m)`` also blackholes connections into
    ``m`` whose dialer could not be identified. Every change calls the subscribers (the
    proxies wake their stalled connections) and is logged with a timestamp in :meth:`log`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: dict[frozenset[int], _LinkRule] = {}
        self._isolated: dict[int, bool] = {}  # member -> lossy
        self._subscribers: list[Callable[[], None]] = []
        self._log: list[str] = []

    # -- changing
    def blackhole(self, a: int, b: int, *, lossy: bool = False) -> None:
        def apply() -> None:
            r = self._rule(a, b)
            r.blackhole, r.lossy = True, lossy

        self._change(f"blackhole {link_key(a, b)}{' lossy' if lossy else ''}", apply)

    def isolate(self, member: int, *, lossy: bool = False) -> None:
        def apply() -> None:
            self._isolated[member] = lossy

        self._change(f"isolate {member:x}{' lossy' if lossy else ''}", apply)

    def delay(self, a: int, b: int, ms: float, jitter_ms: float = 0.0) -> None:
        if ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter must not be negative")

        def apply() -> None:
            r = self._rule(a, b)
            r.delay_ms, r.jitter_ms = float(ms), float(jitter_ms)

        self._change(f"delay {link_key(a, b)} {ms}ms+-{jitter_ms}ms", apply)

    def drop(self, a: int, b: int, probability: float) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        self._change(f"drop {link_key(a, b)} p={probability}",
                     lambda: self._rule(a, b).__setattr__("drop", float(probability)))

    def heal(self) -> None:
        def apply() -> None:
            self._links.clear()
            self._isolated.clear()

        self._change("heal", apply)

    # -- reading
    def effect(self, src: int | None, dst: int | None) -> Effect:
        """The faults on a connection dialed by ``src`` into ``dst``'s proxy."""
        with self._lock:
            if dst is not None and dst in self._isolated:
                return Effect(blackhole=True, lossy=self._isolated[dst])
            if src is None or dst is None:
                return _NONE
            if src in self._isolated:
                return Effect(blackhole=True, lossy=self._isolated[src])
            r = self._links.get(frozenset((src, dst)))
            if r is None:
                return _NONE
            return Effect(r.blackhole, r.delay_ms, r.jitter_ms, r.drop, r.lossy)

    def active(self) -> bool:
        with self._lock:
            return bool(self._isolated) or any(
                r.blackhole or r.delay_ms or r.drop for r in self._links.values())

    def log(self) -> list[str]:
        with self._lock:
            return list(self._log)

    def subscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    def note(self, text: str) -> None:
        """Add a line to the fault log (e.g. a process kill done by the cluster)."""
        with self._lock:
            self._log.append(_stamp(text))

    # -- internals
    def _rule(self, a: int, b: int) -> _LinkRule:
        if a == b:
            raise ValueError("a link joins two different members")
        key = frozenset((a, b))
        r = self._links.get(key)
        if r is None:
            r = self._links[key] = _LinkRule()
        return r

    def _change(self, text: str, apply: Callable[[], None]) -> None:
        with self._lock:
            apply()
            self._log.append(_stamp(text))
            subscribers = list(self._subscribers)
        for cb in subscribers:
            cb()


def _stamp(text: str) -> str:
    return f"{stamp()} {text}"


# --------------------------------------------------------------------------- statistics


@dataclass
class LinkStats:
    connections: int = 0
    bytes_forwarded: int = 0
    chunks_forwarded: int = 0
    chunks_stalled: int = 0
    connections_reset: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "bytes_forwarded": self.bytes_forwarded,
            "chunks_forwarded": self.chunks_forwarded,
            "chunks_stalled": self.chunks_stalled,
            "connections_reset": self.connections_reset,
        }


# --------------------------------------------------------------------------- the proxy


class _Reset(Exception):
    pass


@dataclass(eq=False)
class _Conn:
    src: int | None
    dst: int | None
    stats: LinkStats
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    reset: bool = False


class FaultProxy:
    """Forwards ``listen`` -> ``upstream`` with the faults of ``rules``.

    ``member_id`` is the ID of the member behind the proxy (the destination of every
    connection); it may be set later, once the member has told its ID. Until then a dialer's
    own claim of the destination (conch's ``to_id``, etcd's ``X-Raft-To``) is used.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        member_id: int | None = None,
        rules: FaultRules | None = None,
        rng: random.Random | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "",
        peek_timeout: float = PEEK_TIMEOUT,
    ) -> None:
        self.upstream = upstream
        self.member_id = member_id
        self.rules = rules if rules is not None else FaultRules()
        self.rng = rng if rng is not None else random.Random(0)
        self.name = name or f"proxy->{upstream[1]}"
        self.peek_timeout = peek_timeout
        self._host = host
        self._want_port = port
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lsock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[_Conn] = set()
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._changed: asyncio.Event | None = None
        self._stats: dict[tuple[int | None, int | None], LinkStats] = {}
        self._stats_lock = threading.Lock()
        self._closed = False

    # -- addresses
    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self._host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- lifecycle
    def start(self) -> FaultProxy:
        """Bind the listening socket and start the loop thread; returns at once when bound."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready: Future[None] = Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve_start())
            except BaseException as e:  # noqa: BLE001 - handed to the starting thread
                ready.set_exception(e)
                loop.close()
                return
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fault-{self.name}", daemon=True)
        self._thread.start()
        ready.result(timeout=10)
        self.rules.subscribe(self._on_rules_changed)
        return self

    async def _serve_start(self) -> None:
        self._changed = asyncio.Event()
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((self._host, self._want_port))
            lsock.listen(128)
            lsock.setblocking(False)
        except BaseException:
            lsock.close()
            raise
        self._lsock = lsock
        self._port = lsock.getsockname()[1]
        self._acceptor = asyncio.create_task(self._accept_loop(lsock))

    async def _accept_loop(self, lsock: socket.socket) -> None:
        # Our own accept loop rather than asyncio.start_server: every accepted socket is ours
        # at once, so close() can reset it (start_server can leak a socket accepted just
        # before Server.close()).
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _addr = await loop.sock_accept(lsock)
            except asyncio.CancelledError:
                raise
            except OSError:
                await asyncio.sleep(0.05)  # e.g. EMFILE; keep serving
                continue
            if self._closed:
                _linger0(conn)
                conn.close()
                continue
            task = asyncio.create_task(self._adopt(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _adopt(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=_READ_LIMIT)
        except BaseException:
            _linger0(conn)
            conn.close()
            return
        try:
            await self._handle(reader, writer)
        except asyncio.CancelledError:
            pass  # closing
        finally:
            _abort(writer) if self._closed else writer.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, reset every connection, stop the loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.rules.unsubscribe(self._on_rules_changed)
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(BaseException):
                await self._acceptor
        if self._lsock is not None:
            self._lsock.close()  # the kernel resets connections not accepted yet
        for c in list(self._conns):
            self._reset(c, count=False)
        for w in self._handlers.values():
            _abort(w)
        self._wake()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        await asyncio.sleep(0)  # the aborted transports close their sockets

    def __enter__(self) -> FaultProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- fault shortcuts (the shared rules)
    def blackhole(self, a: int, b: int) -> None:
        self.rules.blackhole(a, b)

    def isolate(self, member: int) -> None:
        self.rules.isolate(member)

    def delay(self, a: int, b: int, ms: float, jitter_ms: float = 0.0) -> None:
        self.rules.delay(a, b, ms, jitter_ms)

    def drop(self, a: int, b: int, probability: float) -> None:
        self.rules.drop(a, b, probability)

    def heal(self) -> None:
        self.rules.heal()

    # -- statistics
    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per link (``link_key``), both directions of every connection summed.
        Connections accepted before ``member_id`` was known count for ``member_id`` now."""
        out: dict[str, dict[str, int]] = {}
        with self._stats_lock:
            for (src, dst), s in self._stats.items():
                key = link_key(src, dst if dst is not None else self.member_id)
                d = out.setdefault(key, dict.fromkeys(s.as_dict(), 0))
                for k, v in s.as_dict().items():
                    d[k] += v
        return out

    def open_connections(self) -> int:
        return len(self._conns)

    def _stats_for(self, src: int | None, dst: int | None) -> LinkStats:
        with self._stats_lock:
            s = self._stats.get((src, dst))
            if s is None:
                s = self._stats[(src, dst)] = LinkStats()
            return s

    # -- the loop side
    def _on_rules_changed(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _effect(self, c: _Conn) -> Effect:
        dst = self.member_id if self.member_id is not None else c.dst
        return self.rules.effect(c.src, dst)

    async def _gate(self, c: _Conn) -> bool:
        """Wait while the connection is blackholed; True if it had to wait. A connection that
        waited out a lossy blackhole is reset."""
        waited = lossy = False
        while not c.reset and not self._closed:
            eff = self._effect(c)
            if not eff.blackhole:
                break
            waited, lossy = True, lossy or eff.lossy
            assert self._changed is not None
            await self._changed.wait()
        if lossy and not c.reset:
            self._reset(c, count=True)
        return waited

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            await self._handle_conn(reader, writer)
        finally:
            self._handlers.pop(task, None)

    async def _handle_conn(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        head = await _peek(reader, self.peek_timeout)
        if self._closed:
            return
        src, dst = identify(head)
        if self.member_id is not None:
            dst = self.member_id
        c = _Conn(src, dst, self._stats_for(src, dst))
        c.stats.connections += 1
        c.writers.append(writer)
        self._conns.add(c)
        try:
            # a blackholed link accepts connections but forwards nothing, not even the dial
            if await self._gate(c):
                c.stats.chunks_stalled += 1
            if c.reset:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    *self.upstream, limit=_READ_LIMIT)
            except OSError:
                self._reset(c, count=False)
                return
            c.writers.append(up_writer)
            if c.reset:
                return
            c.tasks = [
                asyncio.create_task(self._pump(c, reader, up_writer, head)),
                asyncio.create_task(self._pump(c, up_reader, writer, b"")),
            ]
            await asyncio.gather(*c.tasks, return_exceptions=True)
        finally:
            self._conns.discard(c)
            for w in c.writers:
                w.close()

    async def _pump(self, c: _Conn, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, first: bytes) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(c, queue, writer))
        last_release = 0.0
        loop = asyncio.get_running_loop()
        try:
            data = first
            while not c.reset:
                if data:
                    eff = self._effect(c)
                    hold = eff.delay_ms
                    if eff.jitter_ms:
                        hold += self.rng.uniform(-eff.jitter_ms, eff.jitter_ms)
                    release = max(loop.time() + max(hold, 0.0) / 1000.0, last_release)
                    last_release = release
                    await queue.put((release, data))
                if await self._gate(c):
                    c.stats.chunks_stalled += 1
                if c.reset:
                    break
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    self._reset(c, count=False)
                    break
                if not data:
                    await queue.put(None)  # EOF: half-close the other side once sent
                    break
            if not c.reset:
                await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender

    async def _send(self, c: _Conn, queue: asyncio.Queue[tuple[float, bytes] | None],
                    writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while not c.reset:
            item = await queue.get()
            if item is None:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            release, data = item
            while not c.reset:
                if await self._gate(c):
                    c.stats.chunks_stalled += 1
                wait = release - loop.time()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if c.reset:
                return
            eff = self._effect(c)
            if eff.blackhole:
                continue  # unreachable: the gate passed; keeps the type checker honest
            if eff.drop and self.rng.random() < eff.drop:
                self._reset(c, count=True)
                return
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                self._reset(c, count=False)
                return
            c.stats.bytes_forwarded += len(data)
            c.stats.chunks_forwarded += 1

    def _reset(self, c: _Conn, *, count: bool) -> None:
        """Close both sockets at once with RST (SO_LINGER 0): in-flight data is lost."""
        if c.reset:
            return
        c.reset = True
        if count:
            c.stats.connections_reset += 1
        for w in c.writers:
            _abort(w)
        current = asyncio.current_task()
        for t in c.tasks:
            if t is not current:
                t.cancel()
        self._wake()  # a connection stalled before its pumps started notices the reset


def _linger0(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _abort(w: asyncio.StreamWriter) -> None:
    """Close a socket at once with RST (SO_LINGER 0), dropping unsent data."""
    sock = w.get_extra_info("socket")
    if sock is not None:
        _linger0(sock)
    w.transport.abort()


def pairs(members: Iterable[int]) -> list[tuple[int, int]]:
    """Every unordered pair of ``members``."""
    ms = list(members)
    return [(a, b) for i, a in enumerate(ms) for b in ms[i + 1:]]
