"""`conch`: run one member, configured like etcd (flags, ETCD_* variables, --config-file)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import grpc

from conch import ETCD_COMPAT_VERSION, __version__
from conch.server import config as config_mod
from conch.server.config import Config, ConfigError
from conch.wal import exists as wal_exists

if TYPE_CHECKING:
    from conch.server.member import JoinInfo

log = logging.getLogger("conch")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "dpanic": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_GRPC_OVERHEAD = 512 * 1024  # etcd allows this much above --max-request-bytes on receive


def _grpc_address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme in ("unix", "unixs"):
        return f"unix:{parts.netloc}{parts.path}"
    return parts.netloc


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 80


async def serve(cfg: Config, ready: asyncio.Event | None = None) -> int:
    """Run a member until SIGTERM/SIGINT; returns the signal number that stopped it (or 0)."""
    from conch.api.cluster import ClusterService
    from conch.api.http import HTTPEndpoints
    from conch.api.kv import KVService
    from conch.api.lease import LeaseService
    from conch.api.maintenance import AuthService, MaintenanceService
    from conch.api.watch import WatchService
    from conch.proto.etcdserverpb import rpc_pb2_grpc
    from conch.server.member import Member

    join = None
    if cfg.initial_cluster_state == "existing" and not wal_exists(cfg.wal_path):
        join = await _fetch_join_info(cfg)
    member = Member(cfg, join)
    await asyncio.to_thread(member.open)
    transport = None
    if cfg.listen_peer_urls_set or len(member.membership.members) > 1:
        from conch.transport import Transport

        for url in cfg.listen_peer_urls:
            if urlsplit(url).scheme != "http":
                raise ConfigError(f"only http:// peer URLs are supported yet: {url}")
        transport = Transport(
            member_id=member.member_id,
            cluster_id=member.cluster_id,
            listen_urls=cfg.listen_peer_urls,
            snap_dir=os.path.join(cfg.member_dir, "snap"),
            on_message=member.step,
            on_snapshot=member.on_snapshot,
            on_unreachable=member.report_unreachable,
            on_removed=member.on_removed,
            members_info=member.members_info,
        )
        await transport.start()
    await member.start(transport)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", cfg.max_request_bytes + _GRPC_OVERHEAD),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_concurrent_streams", 2**31 - 1),
            ("grpc.so_reuseport", 0),
        ]
    )
    rpc_pb2_grpc.add_KVServicer_to_server(KVService(member), server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(member), server)
    rpc_pb2_grpc.add_WatchServicer_to_server(WatchService(member.hub, member.header), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(member), server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(member), server)
    rpc_pb2_grpc.add_AuthServicer_to_server(AuthService(member), server)
    for url in cfg.listen_client_urls:
        if urlsplit(url).scheme in ("https", "unixs"):
            raise ConfigError(f"TLS client URLs are not supported yet: {url}")
        server.add_insecure_port(_grpc_address(url))
    await server.start()

    http_servers: list[asyncio.Server] = []
    listeners = ((cfg.listen_client_http_urls, False), (cfg.listen_metrics_urls, True))
    for urls, metrics_only in listeners:
        endpoints = HTTPEndpoints(member, metrics_only=metrics_only)
        for url in urls:
            host, port = _host_port(url)
            http_servers.append(await asyncio.start_server(endpoints.handle, host, port))

    log.info(
        "conch %s (etcd %s API) member %x of cluster %x serving clients on %s",
        __version__, ETCD_COMPAT_VERSION, member.member_id, member.cluster_id,
        ",".join(cfg.listen_client_urls),
    )
    # etcd prints this line once it serves; scripts and tests wait for it.
    print("ready to serve client requests", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    got: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        got.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if ready is not None:
        ready.set()
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(member.removed.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    log.info("received %s, shutting down", signal.Signals(got[0]).name if got else "stop")
    for s in http_servers:
        s.close()
    await server.stop(grace=1.0)
    await member.stop()
    return got[0] if got else 0


async def _fetch_join_info(cfg: Config) -> JoinInfo:
    """Ask the members listed in --initial-cluster for the cluster ID and for the ID that
    `member add` gave this member's peer URLs (etcd's GET /members on a peer URL)."""
    import json

    from conch.server.member import JoinInfo
    from conch.server.membership import MemberInfo
    from conch.transport import fetch_members

    mine = set(cfg.initial_advertise_peer_urls)
    urls = [u for us in cfg.initial_cluster_map().values() for u in us if u not in mine]
    if not urls:
        raise ConfigError("--initial-cluster-state existing needs other members in "
                          "--initial-cluster")
    deadline = asyncio.get_running_loop().time() + 10.0
    last = "no member answered"
    while asyncio.get_running_loop().time() < deadline:
        for url in urls:
            try:
                cluster_id, _, raw = await fetch_members(url)
            except (OSError, TimeoutError, Exception) as exc:  # try the next member
                last = f"{url}: {exc}"
                continue
            members = [MemberInfo.from_json(json.dumps(d).encode()) for d in json.loads(raw)]
            for m in members:
                if set(m.peer_urls) == mine:
                    return JoinInfo(cluster_id, m.id, members)
            raise ConfigError(
                f"this member's peer URLs {sorted(mine)} are not in the cluster's member list "
                "(add it first with `etcdctl member add`)"
            )
        await asyncio.sleep(0.5)
    raise ConfigError(f"could not get the member list of the cluster to join ({last})")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "-help"):
        print(config_mod.usage())
        return 0
    if args and args[0] in ("--version", "-version"):
        print(f"conch Version: {__version__}\netcd API Version: {ETCD_COMPAT_VERSION}")
        return 0
    try:
        cfg = config_mod.load(args)
    except ConfigError as exc:
        print(f"conch: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=_LEVELS.get(cfg.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from conch import failpoints
    from conch.server.member import StartupError

    try:
        # gofail's GOFAIL_HTTP: failpoints armed at run time, from before the member opens.
        fp_http = failpoints.serve_http_from_env()
    except (OSError, ValueError) as exc:
        print(f"conch: CONCH_FAILPOINTS_HTTP: {exc}", file=sys.stderr)
        return 1
    if fp_http is not None:
        log.warning("failpoint control listening on %s:%d", *fp_http.server_address[:2])
    try:
        sig = asyncio.run(serve(cfg))
    except (ConfigError, StartupError) as exc:
        log.critical("%s", exc)
        print(f"conch: {exc}", file=sys.stderr)
        return 1
    if sig:
        # Exit the way etcd does: by the signal itself (status 143 for SIGTERM under systemd).
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
