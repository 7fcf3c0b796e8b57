"""The HTTP endpoints beside gRPC: /health, /livez, /readyz, /version, /metrics.

A deliberately small HTTP/1.1 server on asyncio streams (GET only, keep-alive), so the
member needs no web framework. It listens on --listen-client-http-urls and
--listen-metrics-urls (see docs/compat.md for why not on the gRPC port itself).
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import parse_qs, urlsplit

from conch import ETCD_COMPAT_VERSION
from conch.server.metrics import exposition
from conch.server.server import EtcdServer

log = logging.getLogger("conch.http")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HTTPEndpoints:
    def __init__(self, server: EtcdServer, *, metrics_only: bool = False) -> None:
        self._s = server
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
            return 200, "text/plain; version=0.0.4", exposition(self._s).encode()
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
        serializable = query.get("serializable", ["false"])[0] == "true"
        reason = await self._s.maintenance.health(set(query.get("exclude", [])), serializable)
        ok = not reason
        # Go's json.Marshal: no spaces.
        body = json.dumps(
            {"health": "true" if ok else "false", "reason": reason}, separators=(",", ":")
        )
        return (200 if ok else 503), "application/json", body.encode()

    async def _probe(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        kind, _, only = path.strip("/").partition("/")
        ops = self._s.maintenance
        checks = list(ops.READYZ_CHECKS if kind == "readyz" else ops.LIVEZ_CHECKS)
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
            problem = await ops.check(check)
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
