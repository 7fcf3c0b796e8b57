"""Run a member inside a Python program (etcd's `embed` package): `await start(cfg)` opens
the data dir, joins or bootstraps the cluster, serves peers and clients, and returns an
`Embedded` whose `close()` stops it all. The `conch` command is this plus signals."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from urllib.parse import urlsplit

from conch.api.listeners import ClientListeners
from conch.server.bootstrap import JoinInfo
from conch.server.config import Config, ConfigError
from conch.server.member import Member
from conch.server.membership import MemberInfo
from conch.server.ports import Ports
from conch.server.server import EtcdServer
from conch.wal import exists as wal_exists

log = logging.getLogger("conch")

_JOIN_TIMEOUT_S = 10.0
_JOIN_RETRY_S = 0.5


class Embedded:
    """A running member: `server` is its façade, `removed` is set once it was removed from
    the cluster (the process should then stop)."""

    def __init__(self, member: Member, listeners: ClientListeners) -> None:
        self.member = member
        self.server: EtcdServer = member.server
        self.removed = member.removed
        self._listeners = listeners

    async def close(self) -> None:
        await self._listeners.stop()
        await self.member.stop()


async def start(cfg: Config, ports: Ports | None = None) -> Embedded:
    """Start a member with configuration `cfg`. Raises ConfigError or StartupError (the
    message says why) if it cannot."""
    join = None
    if cfg.initial_cluster_state == "existing" and not wal_exists(cfg.wal_path):
        join = await fetch_join_info(cfg)
    member = Member(cfg, join, ports)
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
    listeners = ClientListeners(member.server, cfg)
    try:
        await listeners.start()
    except BaseException:
        await listeners.stop()
        await member.stop()
        raise
    return Embedded(member, listeners)


async def fetch_join_info(cfg: Config) -> JoinInfo:
    """Ask the members listed in --initial-cluster for the cluster ID and for the ID that
    `member add` gave this member's peer URLs (etcd's GET /members on a peer URL)."""
    from conch.transport import fetch_members

    mine = set(cfg.initial_advertise_peer_urls)
    urls = [u for us in cfg.initial_cluster_map().values() for u in us if u not in mine]
    if not urls:
        raise ConfigError("--initial-cluster-state existing needs other members in "
                          "--initial-cluster")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _JOIN_TIMEOUT_S
    last = "no member answered"
    while loop.time() < deadline:
        for url in urls:
            try:
                cluster_id, _, raw = await fetch_members(url)
            except Exception as exc:  # try the next member
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
        await asyncio.sleep(_JOIN_RETRY_S)
    raise ConfigError(f"could not get the member list of the cluster to join ({last})")
