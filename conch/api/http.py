"""The HTTP endpoints beside gRPC: /health, /livez, /readyz, /version, /metrics.

A deliberately small HTTP/1.1 server on asyncio streams (GET only, keep-alive), so the
member needs no web framework. It listens on --listen-client-http-urls and
--listen-metrics-urls (see docs/compat.md for why not on the gRPC port itself).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from conch import ETCD_COMPAT_VERSION
from conch.errors import EtcdError
from conch.proto.etcdserverpb import rpc_pb2

if TYPE_CHECKING:
    from conch.server.member import Member

log = logging.getLogger("conch.http")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HTTPEndpoints:
    def __init__(self, member: Member, *, metrics_only: bool = False) -> None:
        self._m = member
        self._metrics_only = metrics_only

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    method, target, _version = line.decode("latin-1").split(" ", 2)
                except ValueError:
                    return
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                status, ctype, body = await self._route(method, target)
                keep = headers.get("connection", "").lower() != "close"
                writer.write(
                    (
                        f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                        f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
                    ).encode()
                    + body
                )
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _route(self, method: str, target: str) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        query = parse_qs(url.query, keep_blank_values=True)
        path = url.path
        if method != "GET":
            return 405, "text/plain", b"Method Not Allowed"
        if path == "/health":
            return await self._health(query)
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self._metrics().encode()
        if self._metrics_only:
            return 404, "text/plain", b"404 page not found\n"
        if path == "/version":
            body = json.dumps(
                {"etcdserver": ETCD_COMPAT_VERSION, "etcdcluster": ETCD_COMPAT_VERSION[:-1] + "0"},
                separators=(",", ":"),
            )
            return 200, "application/json", body.encode()
        if path.startswith("/livez") or path.startswith("/readyz"):
            return await self._probe(path, query)
        return 404, "text/plain", b"404 page not found\n"

    async def _health(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        excluded = set(query.get("exclude", []))
        reason = ""
        for _, alarm in sorted(self._m.applier.alarms):
            name = rpc_pb2.AlarmType.Name(alarm)
            if name not in excluded:
                reason = f"ALARM {name}"
                break
        if not reason and not self._m.lead:
            reason = "RAFT NO LEADER"
        if not reason:
            serializable = query.get("serializable", ["false"])[0] == "true"
            try:
                if not serializable:
                    await self._m.read_barrier()
                self._m.store.range(rpc_pb2.RangeRequest(key=b"health"))
            except EtcdError as exc:
                reason = f"RANGE ERROR:{exc.message}"
        ok = not reason
        # Go's json.Marshal: no spaces.
        body = json.dumps(
            {"health": "true" if ok else "false", "reason": reason}, separators=(",", ":")
        )
        return (200 if ok else 503), "application/json", body.encode()

    async def _probe(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        kind, _, only = path.strip("/").partition("/")
        checks = ["serializable_read"]
        if kind == "readyz":
            checks = ["data_corruption", "serializable_read", "linearizable_read", "non_learner"]
        if only:
            if only not in checks:
                return 404, "text/plain", b"404 page not found\n"
            checks = [only]
        excluded = set(query.get("exclude", []))
        lines, failed = [], False
        for check in checks:
            if check in excluded:
                lines.append(f"[+]{check} excluded: ok")
                continue
            problem = await self._check(check)
            if problem:
                failed = True
                lines.append(f"[-]{check} failed: {problem}")
            else:
                lines.append(f"[+]{check} ok")
        if failed:
            return 503, "text/plain", ("\n".join(lines) + f"\n{kind} check failed\n").encode()
        if "verbose" in query:
            return 200, "text/plain", ("\n".join(lines) + f"\n{kind} check passed\n").encode()
        return 200, "text/plain", b"ok\n"

    async def _check(self, check: str) -> str:
        m = self._m
        try:
            if check == "data_corruption":
                if any(a == rpc_pb2.CORRUPT for _, a in m.applier.alarms):
                    return "alarm activated: CORRUPT"
            elif check == "serializable_read":
                m.store.range(rpc_pb2.RangeRequest(key=b"health", serializable=True))
            elif check == "linearizable_read":
                await m.read_barrier()
                m.store.range(rpc_pb2.RangeRequest(key=b"health"))
        except EtcdError as exc:
            return exc.message
        return ""

    def _metrics(self) -> str:
        m = self._m
        c = m.metrics
        out: list[str] = []

        def gauge(name: str, value: float, help_: str, kind: str = "gauge") -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.append(f"{name} {value}")

        def histogram(name: str, buckets: list[int], total: float, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} histogram")
            acc = 0
            for bound, n in zip(c.BUCKETS, buckets, strict=False):
                acc += n
                out.append(f'{name}_bucket{{le="{bound}"}} {acc}')
            acc += buckets[-1]
            out.append(f'{name}_bucket{{le="+Inf"}} {acc}')
            out.append(f"{name}_sum {total}")
            out.append(f"{name}_count {acc}")

        gauge(
            "etcd_server_has_leader", int(m.lead != 0),
            "Whether or not a leader exists. 1 is existence.",
        )
        gauge("etcd_server_is_leader", int(m.is_leader), "Whether or not this member is a leader.")
        gauge(
            "etcd_server_leader_changes_seen_total", m.leader_changes,
            "The number of leader changes seen.",
            "counter",
        )
        gauge(
            "etcd_server_proposals_committed_total", m.committed_index,
            "The total number of consensus proposals committed.", "counter",
        )
        gauge(
            "etcd_server_proposals_applied_total", m.applied_index,
            "The total number of consensus proposals applied.", "counter",
        )
        gauge(
            "etcd_server_proposals_pending", m.metrics.proposals_pending,
            "The current number of pending proposals to commit.",
        )
        gauge(
            "etcd_server_quota_backend_bytes", m.cfg.quota_bytes,
            "Current backend storage quota size in bytes.",
        )
        gauge(
            "etcd_mvcc_db_total_size_in_bytes", m.backend.size(),
            "Total size of the underlying database physically allocated in bytes.",
        )
        gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes", m.backend.size_in_use(),
            "Total size of the underlying database logically in use in bytes.",
        )
        for op in ("put", "range", "delete", "txn"):
            gauge(
                f"etcd_mvcc_{op}_total", getattr(c, f"{op}_total"),
                f"Total number of {op}s seen by this member.", "counter",
            )
        gauge(
            "etcd_debugging_mvcc_current_revision", m.store.current_revision(),
            "The current revision of store.",
        )
        gauge(
            "etcd_debugging_mvcc_compact_revision", m.store.compact_revision(),
            "The revision of the last compaction in store.",
        )
        gauge(
            "etcd_debugging_mvcc_watcher_total", m.hub.watcher_count(),
            "Total number of watchers.",
        )
        histogram(
            "etcd_disk_wal_fsync_duration_seconds", c.fsync, c.fsync_sum,
            "The latency distributions of fsync called by WAL.",
        )
        histogram(
            "etcd_disk_backend_commit_duration_seconds", c.commit, c.commit_sum,
            "The latency distributions of commit called by backend.",
        )
        return "\n".join(out) + "\n"
