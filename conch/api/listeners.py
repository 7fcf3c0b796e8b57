"""The client-facing listeners of one member: the gRPC server on every client URL and the
HTTP endpoints on --listen-client-http-urls / --listen-metrics-urls, all over one façade."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import grpc

from conch.api.cluster import ClusterService
from conch.api.forward import GrpcLeaderClient
from conch.api.http import HTTPEndpoints
from conch.api.kv import KVService
from conch.api.lease import LeaseService
from conch.api.maintenance import AuthService, MaintenanceService
from conch.api.watch import WatchService
from conch.proto.etcdserverpb import rpc_pb2_grpc
from conch.server.config import Config, ConfigError
from conch.server.server import EtcdServer

_GRPC_OVERHEAD = 512 * 1024  # etcd allows this much above --max-request-bytes on receive


def _grpc_address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme in ("unix", "unixs"):
        return f"unix:{parts.netloc}{parts.path}"
    return parts.netloc


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 80


class ClientListeners:
    def __init__(self, server: EtcdServer, cfg: Config) -> None:
        self._server = server
        self._cfg = cfg
        self._grpc: grpc.aio.Server | None = None
        self._http: list[asyncio.Server] = []
        self._leader = GrpcLeaderClient()

    async def start(self) -> None:
        cfg, s = self._cfg, self._server
        s.leader_client = self._leader
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_request_bytes + _GRPC_OVERHEAD),
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_concurrent_streams", 2**31 - 1),
                ("grpc.so_reuseport", 0),
            ]
        )
        rpc_pb2_grpc.add_KVServicer_to_server(KVService(s), server)
        rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(s), server)
        rpc_pb2_grpc.add_WatchServicer_to_server(WatchService(s.hub, s.header), server)
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(s), server)
        rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(s), server)
        rpc_pb2_grpc.add_AuthServicer_to_server(AuthService(s), server)
        for url in cfg.listen_client_urls:
            if urlsplit(url).scheme in ("https", "unixs"):
                raise ConfigError(f"TLS client URLs are not supported yet: {url}")
            server.add_insecure_port(_grpc_address(url))
        await server.start()
        self._grpc = server
        listeners = ((cfg.listen_client_http_urls, False), (cfg.listen_metrics_urls, True))
        for urls, metrics_only in listeners:
            endpoints = HTTPEndpoints(s, metrics_only=metrics_only)
            for url in urls:
                host, port = _host_port(url)
                self._http.append(await asyncio.start_server(endpoints.handle, host, port))

    async def stop(self) -> None:
        for h in self._http:
            h.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        await self._leader.close()
