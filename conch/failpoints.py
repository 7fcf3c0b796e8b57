"""Failpoints: named places where a test can make a member crash or stall (etcd's gofail).

A failpoint is armed with a *term* ``[P%][N*]action``:

- ``panic``      print ``failpoint NAME: panic`` to stderr and exit at once with status 3
                 (``os._exit``: no clean-up, no flush of anything else, like a Go panic);
- ``sleep(X)``   block the calling thread for X: an integer is milliseconds (as in gofail),
                 otherwise a Go duration (``500ms``, ``1s``, ``1.5s``, ``1m30s``);
- ``off``        armed but does nothing;
- ``N*``         only the next N hits act, then the point is disarmed;
- ``P%``         each hit acts with probability P (a float); the random source is one
                 module-level ``random.Random``, seeded from ``CONCH_FAILPOINTS_SEED`` if set.

Configuration:

- ``CONCH_FAILPOINTS="name=term;name2=term"`` arms points at start-up (``,`` is accepted as a
  separator too). An unknown name or a bad term raises at import: a typo must not pass.
- ``CONCH_FAILPOINTS_HTTP=127.0.0.1:PORT`` makes the server (``conch.cli.server``) start a
  small HTTP server on a daemon thread, like gofail's ``GOFAIL_HTTP``:
  ``PUT /NAME`` (body: the term) arms, ``GET /NAME`` returns the term (404 if unarmed),
  ``DELETE /NAME`` disarms, ``GET /NAME/count`` says how often the point acted since it was
  armed, ``GET /`` lists ``name=term`` for every known point (empty term if unarmed),
  ``PUT /`` with ``name=term`` lines arms several. Unknown names get 404, bad terms 400.
  Only loopback addresses are accepted.

`KNOWN` lists every point with where it sits in conch. `hit(name)` is on hot paths: with
nothing armed it is one dict lookup. The hits run on the event-loop thread, the WAL disk
thread and worker threads; arming and counting are serialised by one lock. Points in
coroutines use `await hit_async(name)`, whose sleep suspends only that coroutine; a sleep at
a point in synchronous code on the loop (the apply path: commits, compaction) stalls the
whole member, where etcd would stall its apply goroutine.

This module imports nothing of conch, so every layer (backend, mvcc, server) may use it.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Every failpoint conch has: name (etcd's where etcd has one) -> where it sits.
KNOWN: dict[str, str] = {
    # --- the Ready loop (conch/server/raftnode.py, RaftNode._handle_ready) ---------------
    "raftBeforeSave": (
        "WAL disk thread, before a Ready's hard state and entries are written (and fsynced)"
    ),
    "raftAfterSave": (
        "WAL disk thread, after a Ready's hard state and entries are written (and fsynced)"
    ),
    "raftBeforeLeaderSend": (
        "raft loop, before a leader sends a Ready's messages (before the WAL save when the "
        "Ready has new entries, as etcd's leader; after the apply otherwise); needs a peer"
    ),
    "raftBeforeFollowerSend": (
        "raft loop, before a follower or candidate sends a Ready's messages (after the WAL save)"
    ),
    "raftBeforeSaveSnap": (
        "raft loop, a snapshot from the leader arrived: before its .snap file and WAL "
        "snapshot record are written"
    ),
    "raftAfterSaveSnap": (
        "raft loop, after the leader's snapshot's .snap file and WAL record are written, "
        "before the Ready's entries"
    ),
    "raftBeforeApplySnap": (
        "snapshot install, the Ready's entries are durable: before the received database "
        "replaces the backend (conch's raft storage is in memory; this is etcd's "
        "applyBeforeOpenSnapshot step)"
    ),
    "raftAfterApplySnap": (
        "snapshot install, right after the received database replaced the backend, before "
        "the in-memory state (leases, membership, revision) is rebuilt from it"
    ),
    "afterSnapshotInstall": (
        "snapshot install, after everything was rebuilt from the received database (conch only)"
    ),
    "raftAfterWALRelease": (
        "WAL disk thread, after this member's own raft snapshot released and purged old WAL "
        "segments and .snap files (conch releases the WAL only after its own snapshots, not "
        "on a snapshot from the leader)"
    ),
    # --- backend (conch/backend/backend.py, Backend.write) ------------------------------
    "beforeCommit": "backend, before an LMDB write transaction commits (every apply batch)",
    "afterCommit": "backend, after an LMDB write transaction committed (every apply batch)",
    # --- compaction: one LMDB transaction, the apply batch holding the Compact request ---
    "compactBeforeCommitScheduledCompact": (
        "compaction, scheduledCompactRev written into the apply transaction, nothing "
        "deleted yet (conch does not commit it separately: it commits with the batch)"
    ),
    "compactBeforeSetFinishedCompact": (
        "compaction, history deleted in the apply transaction, before finishedCompactRev"
    ),
    "compactAfterSetFinishedCompact": (
        "compaction, finishedCompactRev written; the apply transaction is not committed yet "
        "(as in etcd, where it waits for the next batch commit)"
    ),
    "compactBeforeCommitBatch": (
        "compaction, before the apply transaction holding the whole compaction commits "
        "(conch deletes in one batch, the apply batch)"
    ),
    "compactAfterCommitScheduledCompact": (
        "compaction, after the apply transaction holding the compaction committed (the "
        "scheduled revision commits with the deletions: same place as compactAfterCommitBatch)"
    ),
    "compactAfterCommitBatch": (
        "compaction, after the apply transaction holding the whole compaction committed"
    ),
    # --- defragment (conch/server/member.py, Member.defragment; Backend.swap_in) ---------
    "defragBeforeCopy": "defragment, before the compacted copy of the backend is written",
    "defragBeforeRename": (
        "defragment, copy fsynced and the backend closed, before the copy is renamed over it"
    ),
}

PANIC_EXIT_CODE = 3

_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
    "h": 3600.0,
}  # fmt: skip
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_TERM = re.compile(
    r"^(?:(?P<prob>\d+(?:\.\d*)?|\.\d+)%)?(?:(?P<count>\d+)\*)?(?P<action>[a-z]+)"
    r"(?:\((?P<arg>[^()]*)\))?$"
)


def parse_duration(text: str) -> float:
    """Seconds for a gofail sleep argument: an integer is milliseconds, otherwise a Go
    duration such as ``500ms``, ``1.5s`` or ``1m30s``."""
    text = text.strip()
    if text.isdigit():
        return int(text) / 1000.0
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(f"bad duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


@dataclass(frozen=True)
class Term:
    """A parsed ``[P%][N*]action``."""

    text: str
    action: str  # "panic" | "sleep" | "off"
    probability: float | None = None  # percent
    count: int | None = None
    sleep_s: float = 0.0


def parse_term(text: str) -> Term:
    """Parse a gofail term; ValueError if it is not one conch supports."""
    raw = text.strip()
    m = _TERM.match(raw)
    if m is None:
        raise ValueError(f"bad failpoint term {text!r}")
    action, arg = m.group("action"), m.group("arg")
    prob = float(m.group("prob")) if m.group("prob") is not None else None
    if prob is not None and not 0.0 <= prob <= 100.0:
        raise ValueError(f"bad probability in failpoint term {text!r}")
    count = int(m.group("count")) if m.group("count") is not None else None
    if count is not None and count <= 0:
        raise ValueError(f"bad count in failpoint term {text!r}")
    if action == "sleep":
        if arg is None:
            raise ValueError(f"sleep needs a duration: {text!r}")
        return Term(raw, "sleep", prob, count, parse_duration(arg))
    if action in ("panic", "off"):
        if arg is not None:
            raise ValueError(f"{action} takes no argument: {text!r}")
        return Term(raw, action, prob, count)
    raise ValueError(f"unknown failpoint action in {text!r} (panic, sleep(X), off)")


# --- state ---------------------------------------------------------------------------------
_lock = threading.Lock()
_armed: dict[str, Term] = {}  # read without the lock by hit(): replaced, never mutated
_remaining: dict[str, int] = {}  # N* terms: hits left
_acted: dict[str, int] = {}  # how often each armed point acted
_seed = os.environ.get("CONCH_FAILPOINTS_SEED")
_rng = random.Random(int(_seed) if _seed and _seed.lstrip("-").isdigit() else _seed)


def _check_name(name: str) -> None:
    if name not in KNOWN:
        raise KeyError(f"unknown failpoint {name!r}")


def enable(name: str, term: str) -> None:
    """Arm `name` with `term` (KeyError for an unknown name, ValueError for a bad term)."""
    global _armed
    _check_name(name)
    t = parse_term(term)
    with _lock:
        armed = dict(_armed)
        armed[name] = t
        _armed = armed
        _acted[name] = 0
        if t.count is not None:
            _remaining[name] = t.count
        else:
            _remaining.pop(name, None)


def disable(name: str) -> None:
    """Disarm `name` (KeyError for an unknown name; disarming an unarmed point is fine)."""
    _check_name(name)
    with _lock:
        _disable_locked(name)


def _disable_locked(name: str) -> None:
    global _armed
    if name in _armed:
        armed = dict(_armed)
        del armed[name]
        _armed = armed
    _remaining.pop(name, None)


def get(name: str) -> str | None:
    """The term `name` is armed with, or None."""
    _check_name(name)
    t = _armed.get(name)
    return None if t is None else t.text


def acted(name: str) -> int:
    """How often `name` acted since it was last armed."""
    _check_name(name)
    with _lock:
        return _acted.get(name, 0)


def armed() -> dict[str, str]:
    """Every armed point and its term."""
    return {name: t.text for name, t in _armed.items()}


def reset() -> None:
    """Disarm everything (tests)."""
    global _armed
    with _lock:
        _armed = {}
        _remaining.clear()
        _acted.clear()


def configure(spec: str) -> None:
    """Arm from ``name=term;name2=term`` (``,`` also separates)."""
    for item in re.split(r"[;,]", spec):
        item = item.strip()
        if not item:
            continue
        name, sep, term = item.partition("=")
        if not sep:
            raise ValueError(f"failpoint setting {item!r} is not name=term")
        enable(name.strip(), term.strip())


def hit(name: str) -> None:
    """Run the action armed for failpoint `name`, if any. Costs one dict lookup if unarmed.
    A sleep blocks the calling thread."""
    t = _armed.get(name)
    if t is None:
        return
    delay = _fire(name, t)
    if delay:
        time.sleep(delay)


async def hit_async(name: str) -> None:
    """`hit` for points on the event loop: a sleep suspends only the calling coroutine (as
    gofail's sleep stalls one goroutine), so the member goes on serving meanwhile."""
    t = _armed.get(name)
    if t is None:
        return
    delay = _fire(name, t)
    if delay:
        import asyncio

        await asyncio.sleep(delay)


def _fire(name: str, t: Term) -> float:
    """Decide whether `t` acts on this hit; panic here, or return the seconds to sleep."""
    if t.action == "off":
        return 0.0
    with _lock:
        if _armed.get(name) is not t:  # disarmed or re-armed meanwhile
            return 0.0
        if t.probability is not None and _rng.random() * 100.0 >= t.probability:
            return 0.0
        if t.count is not None:
            left = _remaining.get(name, 0) - 1
            if left < 0:
                return 0.0
            _remaining[name] = left
            if left == 0:
                _disable_locked(name)
        _acted[name] = _acted.get(name, 0) + 1
    if t.action == "panic":
        try:
            sys.stderr.flush()  # what other threads logged comes first
        except Exception:
            pass
        try:  # one write(2): the line cannot interleave with another thread's output
            os.write(2, f"failpoint {name}: panic\n".encode())
        finally:
            os._exit(PANIC_EXIT_CODE)
    return t.sleep_s


# --- HTTP control (gofail's GOFAIL_HTTP) -------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server_version = "conch-failpoints"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # no access log on the member's stderr

    def _reply(self, code: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(code)
        if code != 204:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if code != 204 and data:
            self.wfile.write(data)

    def _path(self) -> list[str]:
        return [p for p in self.path.split("?", 1)[0].split("/") if p]

    def _body(self) -> str:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n).decode() if n > 0 else ""

    def do_GET(self) -> None:  # noqa: N802
        parts = self._path()
        if not parts:
            now = armed()
            self._reply(200, "".join(f"{n}={now.get(n, '')}\n" for n in sorted(KNOWN)))
            return
        name = parts[0]
        if name not in KNOWN or len(parts) > 2 or (len(parts) == 2 and parts[1] != "count"):
            self._reply(404, f"unknown failpoint {'/'.join(parts)!r}\n")
            return
        if len(parts) == 2:
            self._reply(200, f"{acted(name)}\n")
            return
        term = get(name)
        if term is None:
            self._reply(404, f"failpoint {name} is not armed\n")
        else:
            self._reply(200, term)

    def do_PUT(self) -> None:  # noqa: N802
        parts = self._path()
        body = self._body().strip()
        try:
            if not parts:
                configure(body.replace("\n", ";"))
            elif len(parts) == 1:
                enable(parts[0], body)
            else:
                raise KeyError("/".join(parts))
        except KeyError as exc:
            self._reply(404, f"unknown failpoint {exc.args[0]!r}\n")
            return
        except ValueError as exc:
            self._reply(400, f"{exc}\n")
            return
        self._reply(204)

    do_POST = do_PUT

    def do_DELETE(self) -> None:  # noqa: N802
        parts = self._path()
        if len(parts) != 1 or parts[0] not in KNOWN:
            self._reply(404, f"unknown failpoint {'/'.join(parts)!r}\n")
            return
        disable(parts[0])
        self._reply(204)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _loopback(host: str) -> str:
    if host in ("localhost", ""):
        return "127.0.0.1"
    h = host.strip("[]")
    try:
        ok = ipaddress.ip_address(h).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"failpoint HTTP control listens on loopback only, not {host!r}")
    return h


def serve_http(addr: str) -> ThreadingHTTPServer:
    """Start the control server on ``host:port`` (loopback only) on a daemon thread."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"failpoint HTTP address must be host:port, not {addr!r}")
    ip = _loopback(host)

    cls: type[_Server] = _Server
    if ":" in ip:
        import socket

        class _Server6(_Server):
            address_family = socket.AF_INET6

        cls = _Server6
    srv = cls((ip, int(port)), _Handler)
    threading.Thread(target=srv.serve_forever, name="failpoints-http", daemon=True).start()
    return srv


def serve_http_from_env() -> ThreadingHTTPServer | None:
    """Start the control server if ``CONCH_FAILPOINTS_HTTP`` is set."""
    addr = os.environ.get("CONCH_FAILPOINTS_HTTP", "").strip()
    return serve_http(addr) if addr else None


configure(os.environ.get("CONCH_FAILPOINTS", ""))
