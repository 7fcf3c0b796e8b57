"""etcdserverpb.Maintenance (and the Auth status probe)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import crc32c
import grpc

from conch.api.errors import unary
from conch.backend import BUCKETS
from conch.errors import ErrBadLeaderTransferee, ErrNotLeader, err
from conch.proto.etcdserverpb import raft_internal_pb2, rpc_pb2, rpc_pb2_grpc

if TYPE_CHECKING:
    from conch.server.member import Member

IRR = raft_internal_pb2.InternalRaftRequest
_SNAPSHOT_CHUNK = 32 * 1024


def _alarm_text(member_id: int, alarm: int) -> str:
    return f"memberID:{member_id} alarm:{rpc_pb2.AlarmType.Name(alarm)} "


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, member: Member) -> None:
        self._m = member

    @unary
    async def Status(
        self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.StatusResponse:
        m = self._m
        return rpc_pb2.StatusResponse(
            header=m.header(),
            version=m.version(),
            dbSize=m.backend.size(),
            leader=m.lead,
            raftIndex=m.committed_index,
            raftTerm=m.term,
            raftAppliedIndex=m.applied_index,
            errors=[_alarm_text(mid, a) for mid, a in sorted(m.applier.alarms)],
            dbSizeInUse=m.backend.size_in_use(),
            isLearner=m.is_learner,
        )

    @unary
    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashKVResponse:
        m = self._m
        async with m.maintenance_lock:
            h, compact_rev, hash_rev = await asyncio.to_thread(m.store.hash_kv, request.revision)
        return rpc_pb2.HashKVResponse(
            header=m.header(), hash=h, compact_revision=compact_rev, hash_revision=hash_rev
        )

    @unary
    async def Hash(
        self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashResponse:
        m = self._m

        def whole_backend_hash() -> int:
            value = 0
            with m.backend.read() as txn:
                for name in BUCKETS:
                    value = crc32c.crc32c(name, value)
                    for k, v in txn.cursor(db=m.backend.db(name)):
                        value = crc32c.crc32c(v, crc32c.crc32c(k, value))
            return value

        async with m.maintenance_lock:
            h = await asyncio.to_thread(whole_backend_hash)
        return rpc_pb2.HashResponse(header=m.header(), hash=h)

    @unary
    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        m = self._m
        if request.action == rpc_pb2.AlarmRequest.GET:
            resp = rpc_pb2.AlarmResponse(
                alarms=[
                    rpc_pb2.AlarmMember(memberID=mid, alarm=a)  # type: ignore[arg-type]
                    for mid, a in sorted(m.applier.alarms)
                    if request.alarm in (rpc_pb2.NONE, a)
                ]
            )
            m.fill_header(resp.header)
            return resp
        proposed: rpc_pb2.AlarmResponse = await m.propose_request("alarm", request)
        return proposed

    @unary
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        m = self._m
        await m.defragment()
        return rpc_pb2.DefragmentResponse(header=m.header())

    @unary
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        m = self._m
        if not m.is_leader:
            raise err(ErrNotLeader)
        target = m.membership.members.get(request.targetID)
        if target is None or target.is_learner:
            raise err(ErrBadLeaderTransferee)
        if request.targetID != m.member_id:
            await m.transfer_leadership(request.targetID)
        return rpc_pb2.MoveLeaderResponse(header=m.header())

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """The backend file in 32 KiB chunks, then its SHA-256 as the last blob (etcd's
        framing). The file is LMDB, not bbolt: `etcdctl snapshot restore` cannot read it."""
        m = self._m
        fd, path = tempfile.mkstemp(prefix="snapshot-", dir=os.path.dirname(m.backend.path))
        os.close(fd)
        os.unlink(path)
        try:
            async with m.maintenance_lock:
                await asyncio.to_thread(m.backend.env.copy, path, True)
                header = m.header()
            size = os.path.getsize(path)
            digest = hashlib.sha256()
            sent = 0
            with open(path, "rb") as fh:
                while True:
                    chunk = await asyncio.to_thread(fh.read, _SNAPSHOT_CHUNK)
                    if not chunk:
                        break
                    digest.update(chunk)
                    sent += len(chunk)
                    yield rpc_pb2.SnapshotResponse(
                        header=header, remaining_bytes=size - sent, blob=chunk
                    )
            yield rpc_pb2.SnapshotResponse(header=header, remaining_bytes=0, blob=digest.digest())
        finally:
            if os.path.exists(path):
                os.unlink(path)


class AuthService(rpc_pb2_grpc.AuthServicer):
    """Auth is not implemented yet; AuthStatus answers so that clients can probe it."""

    def __init__(self, member: Member) -> None:
        self._m = member

    @unary
    async def AuthStatus(
        self, request: rpc_pb2.AuthStatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthStatusResponse:
        return rpc_pb2.AuthStatusResponse(header=self._m.header(), enabled=False)
