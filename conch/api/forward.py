"""Calls a follower passes on to the leader: lease keepalives and TTLs (only the leader's
lessor keeps time) and learner promotion (only the leader knows how far a learner is).

etcd forwards these over its peer HTTP API; conch calls the leader's own gRPC client URL
(published through the log as the member's attributes), marking the call as forwarded so a
member that is no longer leader answers "not leader" instead of forwarding again."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc

from conch.errors import ErrNoLeader, ErrNotLeader, err
from conch.proto.etcdserverpb import rpc_pb2_grpc

if TYPE_CHECKING:
    from conch.server.member import Member

FORWARDED = ("conch-forwarded", "1")
_PUBLISH_WAIT_STEPS = 40
_PUBLISH_WAIT_STEP_S = 0.05


def is_forwarded(context: grpc.aio.ServicerContext) -> bool:
    md = context.invocation_metadata() or ()
    return any(k == FORWARDED[0] for k, _ in md)


class LeaderChannel:
    """One gRPC channel to the current leader's client URL, replaced when the leader changes."""

    def __init__(self, member: Member) -> None:
        self._m = member
        self._lead = 0
        self._channel: grpc.aio.Channel | None = None

    async def _target(self) -> grpc.aio.Channel:
        m = self._m
        lead = m.lead
        if not lead:
            raise err(ErrNoLeader)
        if lead == m.member_id:
            raise err(ErrNotLeader)  # callers handle the leader case locally
        if lead != self._lead or self._channel is None:
            info = m.membership.members.get(lead)
            # Right after start the leader may not have published its client URLs yet.
            for _ in range(_PUBLISH_WAIT_STEPS):
                if info is not None and info.client_urls:
                    break
                await asyncio.sleep(_PUBLISH_WAIT_STEP_S)
                info = m.membership.members.get(lead)
            if info is None or not info.client_urls:
                raise err(ErrNoLeader)
            if self._channel is not None:
                old = self._channel
                self._channel = None
                _close_later(old)
            url = info.client_urls[0]
            self._channel = grpc.aio.insecure_channel(url.split("://", 1)[-1])
            self._lead = lead
        return self._channel

    async def lease(self) -> rpc_pb2_grpc.LeaseStub:
        return rpc_pb2_grpc.LeaseStub(await self._target())

    async def cluster(self) -> rpc_pb2_grpc.ClusterStub:
        return rpc_pb2_grpc.ClusterStub(await self._target())

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


_closing: set[asyncio.Task[None]] = set()


def _close_later(channel: grpc.aio.Channel) -> None:
    task = asyncio.get_running_loop().create_task(channel.close())
    _closing.add(task)  # keep a reference until it is done
    task.add_done_callback(_closing.discard)
