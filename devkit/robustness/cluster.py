"""N real members of conch or etcd on loopback, from one :class:`ClusterSpec`, with faults.

Every member is an OS process (``python -m conch`` or ``etcd``) started with etcd's flags;
with ``spec.proxy`` its peer URL is advertised through a :class:`~.proxy.FaultProxy`, so
links between members can be cut, delayed or made lossy (:meth:`Cluster.partition`,
:meth:`Cluster.isolate`, :meth:`Cluster.delay`, :meth:`Cluster.drop`). Process faults:
:meth:`Cluster.kill` (SIGKILL), :meth:`Cluster.restart`, :meth:`Cluster.stop` /
:meth:`Cluster.cont` (SIGSTOP/SIGCONT), and conch's HTTP failpoints.

Layout under ``base_dir``: ``<name>/data`` (data dir) and ``<name>/member.log`` (stdout and
stderr of every start). The caller owns ``base_dir`` (keep it when a run fails).

Members are started by :func:`devkit.procs.spawn_logged`: every child gets PR_SET_PDEATHSIG
(SIGKILL) on Linux, so a crashed caller never leaks members, and is forked by one long-lived
spawner thread, so a member restarted from a short-lived fault thread survives that thread.
All waits poll with deadlines.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import grpc

from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from devkit.procs import (
    REPO_ROOT,
    clean_env,
    conch_env,
    etcd_binary,
    free_port,
    log_tail,
    spawn_logged,
    stamp,
)

from .proxy import FaultProxy, FaultRules

__all__ = [
    "Cluster",
    "ClusterError",
    "ClusterSpec",
    "Member",
]

T = TypeVar("T")

Target = Literal["conch", "etcd"]


class ClusterError(RuntimeError):
    """A member did not start, did not serve, or the cluster did not agree in time."""


@dataclass
class ClusterSpec:
    target: Target
    size: int = 3
    snapshot_count: int | None = None  # --snapshot-count
    heartbeat_ms: int = 100  # --heartbeat-interval
    election_ms: int = 1000  # --election-timeout
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra env for every member
    proxy: bool = True  # peer URLs advertised through FaultProxy
    failpoints_http: bool = False  # conch only: CONCH_FAILPOINTS_HTTP=127.0.0.1:<port>
    seed: int = 0


# --------------------------------------------------------------------------- members


@dataclass(eq=False)
class Member:
    name: str
    index: int
    client_port: int
    peer_port: int
    proxy_port: int | None
    data_dir: Path
    log_path: Path
    failpoints_port: int | None = None
    #: the member ID (known after start)
    id: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    stopped: bool = False

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:port`` for gRPC clients and etcdctl."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """The URL the member listens on for peers."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def advertised_peer_url(self) -> str:
        """The URL the other members dial: the proxy's when there is one."""
        port = self.proxy_port if self.proxy_port is not None else self.peer_port
        return f"http://127.0.0.1:{port}"

    @property
    def failpoints_url(self) -> str | None:
        return f"http://127.0.0.1:{self.failpoints_port}" if self.failpoints_port else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        """The process exists (it may be SIGSTOPped: see ``stopped``)."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


# --------------------------------------------------------------------------- the cluster

_live: weakref.WeakSet[Cluster] = weakref.WeakSet()
_cluster_counter = itertools.count(1)

_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
]


class Cluster:
    """Members of ``spec.target`` on loopback; a context manager (start on enter, close on
    exit). Member indices are 0..size-1; names are ``m0``, ``m1``, ..."""

    def __init__(self, spec: ClusterSpec, base_dir: Path) -> None:
        if spec.size < 1:
            raise ValueError("a cluster has at least one member")
        if spec.failpoints_http and spec.target != "conch":
            raise ValueError("HTTP failpoints are a conch feature")
        self.spec = spec
        self.base_dir = Path(base_dir)
        self.token = f"robustness-{os.getpid()}-{next(_cluster_counter)}"
        self.rules = FaultRules()
        self.members: list[Member] = []
        for i in range(spec.size):
            name = f"m{i}"
            d = self.base_dir / name
            self.members.append(Member(
                name=name,
                index=i,
                client_port=free_port(),
                peer_port=free_port(),
                proxy_port=free_port() if spec.proxy else None,
                data_dir=d / "data",
                log_path=d / "member.log",
                failpoints_port=free_port() if spec.failpoints_http else None,
            ))
        self.proxies: list[FaultProxy] = []
        self._faults: list[str] = []
        self._channels: dict[int, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._closed = False
        _live.add(self)

    # -- addresses
    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.advertised_peer_url}" for m in self.members)

    # -- lifecycle
    def start(self, timeout: float = 30) -> None:
        """Start the proxies and every member; return once every member answers a gRPC
        Status and all agree on one leader. Raises ClusterError (with log tails) otherwise;
        the members stay up for inspection until close()."""
        if self.proxies or any(m.starts for m in self.members):
            raise RuntimeError("cluster already started")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.spec.proxy:
            for m in self.members:
                assert m.proxy_port is not None
                self.proxies.append(FaultProxy(
                    ("127.0.0.1", m.peer_port),
                    rules=self.rules,
                    rng=random.Random(self.spec.seed * 1000 + m.index),
                    port=m.proxy_port,
                    name=m.name,
                ).start())
        for m in self.members:
            self._spawn(m)
        self._note(f"started {self.spec.size} {self.spec.target} members")
        deadline = time.monotonic() + timeout
        statuses = self._poll(
            lambda: self._all_agree(self.members), deadline, "every member to serve and agree"
            " on a leader")
        for m, st in zip(self.members, statuses, strict=True):
            m.id = st.header.member_id
        self._check_member_list()
        for m, p in zip(self.members, self.proxies, strict=False):
            p.member_id = m.id

    def close(self) -> None:
        """SIGCONT stopped members, SIGKILL every member and wait for it, stop the proxies.
        Idempotent; never leaves a process behind. The base dir is kept."""
        if self._closed:
            return
        self._closed = True
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.send_signal(signal.SIGCONT)
                    m.proc.kill()
        for m in self.members:
            if m.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.proc.wait(10)
            m.stopped = False
        self._close_channels()
        for p in self.proxies:
            p.close()
        _live.discard(self)

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- process faults
    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` and wait until it has exited."""
        m = self.members[i]
        self._note(f"kill -9 {m.name}")
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(10)
        m.stopped = False
        self._drop_channel(i)

    def restart(self, i: int, timeout: float = 30, *, wait: bool = True) -> None:
        """Start member ``i`` again (killing it first if it runs) with the same flags, ports
        and data dir; wait until it answers Status and knows a leader (``wait=False``: only
        spawn, e.g. when restarting every member of a killed cluster one by one)."""
        m = self.members[i]
        if m.is_running():
            self.kill(i)
        self._note(f"restart {m.name}")
        self._drop_channel(i)
        self._spawn(m)
        if not wait:
            return
        deadline = time.monotonic() + timeout

        def serving() -> rpc_pb2.StatusResponse | None:
            st = self._status(i)
            return st if st is not None and st.leader else None

        self._poll(serving, deadline, f"{m.name} to serve again", members=[m])

    def stop(self, i: int) -> None:
        """SIGSTOP member ``i`` (a frozen process: sockets open, nothing answered)."""
        m = self.members[i]
        self._note(f"SIGSTOP {m.name}")
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGSTOP)
            m.stopped = True

    def cont(self, i: int) -> None:
        m = self.members[i]
        self._note(f"SIGCONT {m.name}")
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGCONT)
        m.stopped = False

    def exit_code(self, i: int) -> int | None:
        """The member's exit status once it has exited (a failpoint panic is 3), else None."""
        proc = self.members[i].proc
        return proc.poll() if proc is not None else None

    # -- network faults (need spec.proxy)
    def partition(self, *groups: Iterable[int], lossy: bool = False) -> None:
        """Blackhole every link between members of different groups (members listed in no
        group keep all their links). ``lossy``: connections it stalled are reset when it ends,
        losing what was queued on them."""
        gs = [sorted(set(g)) for g in groups]
        self._need_proxy()
        self._note("partition " + " | ".join(
            ",".join(self.members[i].name for i in g) for g in gs))
        for a, ga in enumerate(gs):
            for gb in gs[a + 1:]:
                for i in ga:
                    for j in gb:
                        if i != j:
                            self.rules.blackhole(self._id(i), self._id(j), lossy=lossy)

    def isolate(self, i: int, *, lossy: bool = False) -> None:
        """Cut member ``i`` from all others: its links and unidentified connections into it.
        ``lossy``: connections it stalled are reset when it ends (see :meth:`partition`)."""
        self._need_proxy()
        self._note(f"isolate {self.members[i].name}{' (lossy)' if lossy else ''}")
        self.rules.isolate(self._id(i), lossy=lossy)

    def delay(self, i: int, ms: int, jitter_ms: int = 0) -> None:
        """Delay every chunk on every link touching ``i`` by ms +- jitter_ms (each way)."""
        self._need_proxy()
        self._note(f"delay {self.members[i].name} {ms}ms +-{jitter_ms}ms")
        for j in range(len(self.members)):
            if j != i:
                self.rules.delay(self._id(i), self._id(j), ms, jitter_ms)

    def drop(self, i: int, probability: float) -> None:
        """On every link touching ``i``, reset the connection instead of forwarding a chunk
        with this probability."""
        self._need_proxy()
        self._note(f"drop {self.members[i].name} p={probability}")
        for j in range(len(self.members)):
            if j != i:
                self.rules.drop(self._id(i), self._id(j), probability)

    def heal(self) -> None:
        """Clear every network fault (stalled connections resume)."""
        self._note("heal")
        self.rules.heal()

    # -- failpoints (conch)
    def set_failpoint(self, i: int, name: str, term: str) -> None:
        """``PUT {failpoints_url}/{name}`` with body ``term`` (e.g. ``panic``)."""
        m = self.members[i]
        if m.failpoints_url is None:
            raise ClusterError("failpoints_http is off in the spec")
        self._note(f"failpoint {m.name} {name}={term}")
        try:
            self._http(f"{m.failpoints_url}/{name}", "PUT", term.encode())
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
            # A point hit on another thread right after being armed can panic the member
            # before it answers the PUT: that is the fault taking effect, not a failure.
            deadline = time.monotonic() + 2.0
            while m.is_running() and time.monotonic() < deadline:
                time.sleep(0.02)
            if m.is_running():
                raise

    def clear_failpoint(self, i: int, name: str) -> None:
        """``DELETE {failpoints_url}/{name}``; a member that is down is ignored."""
        m = self.members[i]
        if m.failpoints_url is None:
            raise ClusterError("failpoints_http is off in the spec")
        self._note(f"clear failpoint {m.name} {name}")
        if not m.is_running() or m.stopped:
            return
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            self._http(f"{m.failpoints_url}/{name}", "DELETE", None)

    @staticmethod
    def _http(url: str, method: str, body: bytes | None) -> None:
        req = urllib.request.Request(url, data=body, method=method)
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    # -- observation
    def leader(self, timeout: float = 10, *, among: Iterable[int] | None = None) -> int:
        """Index of the member that the running, not stopped members (or those ``among``)
        agree is leader, the leader being one of them; polls until they do (so after a
        fault, ``among`` the survivors waits for a new leader) or raises ClusterError."""
        idx = list(among) if among is not None else self._live_indices()
        members = [self.members[i] for i in idx]
        ids = {m.id for m in members}

        def agreed() -> int | None:
            statuses = self._all_agree(members)
            if statuses is None or statuses[0].leader not in ids:
                return None
            return self._index_of(statuses[0].leader)

        deadline = time.monotonic() + timeout
        return self._poll(agreed, deadline,
                          f"{','.join(m.name for m in members)} to agree on a leader among"
                          " themselves", members=members)

    def wait_healthy(self, timeout: float = 30) -> None:
        """All running, not stopped members answer and agree on one leader, and each has
        applied at least what the leader had when they first agreed (raft index converged)."""
        deadline = time.monotonic() + timeout
        idx = self._live_indices()
        members = [self.members[i] for i in idx]
        statuses = self._poll(lambda: self._all_agree(members), deadline,
                              "the running members to agree on a leader", members=members)
        target = max(st.raftIndex for st in statuses)

        def converged() -> bool:
            for i in idx:
                st = self._status(i)
                if st is None or max(st.raftAppliedIndex, 0) < target:
                    return False
            return True

        self._poll(converged, deadline, f"every running member to apply index {target}",
                   members=members)

    def status(self, i: int, timeout: float = 1.0) -> rpc_pb2.StatusResponse | None:
        """Maintenance.Status of member ``i``, or None when it does not answer in time."""
        return self._status(i, timeout)

    def raft_index(self, exclude: int | None = None) -> int:
        """The highest raft index reported by the answering running members other than
        ``exclude`` (0 when none answers)."""
        best = 0
        for i in self._live_indices():
            if i != exclude:
                st = self._status(i)
                if st is not None:
                    best = max(best, st.raftIndex)
        return best

    def catchup_entries(self) -> int:
        """Entries a leader keeps in its log after a snapshot for slow followers (etcd's
        SnapshotCatchUpEntries, 5000; ``--experimental-snapshot-catchup-entries`` if given)."""
        flag = "--experimental-snapshot-catchup-entries"
        args = self.spec.extra_args
        for k, a in enumerate(args):
            if a == flag and k + 1 < len(args):
                return int(args[k + 1])
            if a.startswith(flag + "="):
                return int(a.split("=", 1)[1])
        return 5000

    def faults(self) -> list[str]:
        """Every fault applied (and every start/restart), oldest first, with UTC times."""
        with self._lock:
            return list(self._faults)

    def proxy_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per proxy (named after the member behind it): counters per link, with member
        names instead of IDs (``?`` for unidentified dialers)."""
        names = {f"{m.id:x}": m.name for m in self.members if m.id}
        out: dict[str, dict[str, dict[str, int]]] = {}
        for m, p in zip(self.members, self.proxies, strict=False):
            per: dict[str, dict[str, int]] = {}
            for key, counters in p.stats().items():
                a, _, b = key.partition("~")
                per["~".join(sorted((names.get(a, a), names.get(b, b))))] = counters
            out[m.name] = per
        return out

    def log_tails(self, lines: int = 20) -> str:
        return "\n".join(f"--- {m.name} ({m.log_path}):\n{m.log_tail(lines)}"
                         for m in self.members)

    # -- internals
    def command(self, m: Member) -> list[str]:
        s = self.spec
        if s.target == "conch":
            cmd = [sys.executable, "-m", "conch"]
        else:
            binary = etcd_binary()
            if binary is None:
                raise ClusterError("etcd binary not found (PATH, $CONCH_ETCD_BIN or $ETCD_BIN)")
            cmd = [binary]
        cmd += [
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.advertised_peer_url,
            "--initial-cluster", self.initial_cluster(),
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(s.heartbeat_ms),
            "--election-timeout", str(s.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if s.snapshot_count is not None:
            cmd += ["--snapshot-count", str(s.snapshot_count)]
        return cmd + list(s.extra_args)

    def _env(self, m: Member) -> dict[str, str]:
        extra = dict(self.spec.env)
        if self.spec.target != "conch":
            return clean_env(extra)
        if m.failpoints_port:
            extra["CONCH_FAILPOINTS_HTTP"] = f"127.0.0.1:{m.failpoints_port}"
        return conch_env(extra)

    def _spawn(self, m: Member) -> None:
        if self._closed:
            raise RuntimeError("cluster closed")
        cmd = self.command(m)
        m.starts += 1
        cwd = REPO_ROOT if self.spec.target == "conch" else m.log_path.parent
        m.proc = spawn_logged(cmd, m.log_path, header=f"cluster: start #{m.starts}",
                              env=self._env(m), cwd=cwd)
        m.stopped = False

    def _note(self, text: str) -> None:
        with self._lock:
            self._faults.append(f"{stamp()} {text}")

    def _need_proxy(self) -> None:
        if not self.proxies:
            raise ClusterError("network faults need spec.proxy=True")

    def _id(self, i: int) -> int:
        m = self.members[i]
        if not m.id:
            raise ClusterError(f"{m.name}: member ID unknown (cluster not started?)")
        return m.id

    def _index_of(self, member_id: int) -> int | None:
        for m in self.members:
            if m.id == member_id:
                return m.index
        return None

    def _live_indices(self) -> list[int]:
        return [m.index for m in self.members if m.is_running() and not m.stopped]

    def _channel(self, i: int) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(i)
            if ch is None:
                ch = self._channels[i] = grpc.insecure_channel(
                    self.members[i].endpoint, options=_CHANNEL_OPTIONS)
            return ch

    def _drop_channel(self, i: int) -> None:
        with self._lock:
            ch = self._channels.pop(i, None)
        if ch is not None:
            ch.close()

    def _close_channels(self) -> None:
        with self._lock:
            chans = list(self._channels.values())
            self._channels.clear()
        for ch in chans:
            ch.close()

    def _status(self, i: int, timeout: float = 1.0) -> rpc_pb2.StatusResponse | None:
        m = self.members[i]
        if not m.is_running() or m.stopped:
            return None
        try:
            stub = rpc_pb2_grpc.MaintenanceStub(self._channel(i))
            resp: rpc_pb2.StatusResponse = stub.Status(rpc_pb2.StatusRequest(), timeout=timeout)
            return resp
        except grpc.RpcError:
            return None

    def _all_agree(self, members: list[Member]) -> list[rpc_pb2.StatusResponse] | None:
        """Statuses of ``members`` if every one answers and all name the same leader."""
        statuses = []
        for m in members:
            st = self._status(m.index)
            if st is None or not st.leader:
                return None
            statuses.append(st)
        if len({st.leader for st in statuses}) != 1:
            return None
        return statuses

    def _check_member_list(self) -> None:
        """Cross-check the IDs from Status with MemberList (matched by peer URL)."""
        try:
            stub = rpc_pb2_grpc.ClusterStub(self._channel(0))
            resp = stub.MemberList(rpc_pb2.MemberListRequest(), timeout=5)
        except grpc.RpcError:
            return
        by_url = {u: mm.ID for mm in resp.members for u in mm.peerURLs}
        for m in self.members:
            listed = by_url.get(m.advertised_peer_url)
            if listed is not None and listed != m.id:
                raise ClusterError(f"{m.name}: Status says ID {m.id:x}, MemberList {listed:x}")

    def _poll(self, fn: Callable[[], T | None | Literal[False]], deadline: float, what: str,
              members: list[Member] | None = None) -> T:
        """Call ``fn`` until it returns a value; ClusterError at the deadline or when one of
        ``members`` (default: all) exits meanwhile."""
        watched = self.members if members is None else members
        delay = 0.02
        while True:
            v = fn()
            if v is not None and v is not False:
                return v
            dead = [f"{m.name} (exit {m.proc.returncode})" for m in watched
                    if m.proc is not None and m.proc.poll() is not None]
            if dead:
                raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}:\n"
                                   f"{self.log_tails()}")
            if time.monotonic() >= deadline:
                raise ClusterError(f"timed out waiting for {what}:\n{self.log_tails()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)




def close_all() -> None:
    """Close every cluster this process started and has not closed."""
    for c in list(_live):
        with contextlib.suppress(Exception):
            c.close()


atexit.register(close_all)
