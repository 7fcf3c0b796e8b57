"""Maintenance: status, hashes, alarms, defragment, leader moves, backups, and the health
checks behind /health, /livez and /readyz (etcd's `v3rpc/maintenance.go` and
`etcdhttp/health.go`, minus the transport).

Work that reads the whole backend (hashes, a backup copy) runs off the event loop under the
maintenance lock, which defragment and a snapshot install take to replace the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import crc32c

from conch import failpoints
from conch.backend import BUCKETS, Backend
from conch.errors import ErrBadLeaderTransferee, ErrNotLeader, EtcdError, err
from conch.proto.etcdserverpb import rpc_pb2
from conch.server.ports import Blocking

if TYPE_CHECKING:
    from conch.server.server import EtcdServer

SNAPSHOT_CHUNK = 32 * 1024
HEALTH_KEY = b"health"


def alarm_text(member_id: int, alarm: int) -> str:
    """An alarm as etcd's StatusResponse.errors lists it."""
    return f"memberID:{member_id} alarm:{rpc_pb2.AlarmType.Name(alarm)} "


def backend_hash(backend: Backend) -> int:
    """etcd's Hash: crc32c over every bucket name, key and value."""
    value = 0
    with backend.read() as txn:
        for name in BUCKETS:
            value = crc32c.crc32c(name, value)
            for k, v in txn.cursor(db=backend.db(name)):
                value = crc32c.crc32c(v, crc32c.crc32c(k, value))
    return value


class Maintenance:
    def __init__(
        self, server: EtcdServer, backend: Backend, blocking: Blocking, lock: asyncio.Lock
    ) -> None:
        self._s = server
        self.backend = backend
        self._blocking = blocking
        #: held by work that reads the backend off the loop and by whatever replaces it
        self.lock = lock

    @property
    def alarms(self) -> list[tuple[int, int]]:
        return sorted(self._s.apply_stage.applier.alarms)

    async def status(self, req: rpc_pb2.StatusRequest) -> rpc_pb2.StatusResponse:
        s = self._s
        return rpc_pb2.StatusResponse(
            header=s.header(),
            version=s.version(),
            dbSize=self.backend.size(),
            leader=s.lead,
            raftIndex=s.committed_index,
            raftTerm=s.term,
            raftAppliedIndex=s.applied_index,
            errors=[alarm_text(mid, a) for mid, a in self.alarms],
            dbSizeInUse=self.backend.size_in_use(),
            isLearner=s.is_learner,
        )

    async def hash_kv(self, req: rpc_pb2.HashKVRequest) -> rpc_pb2.HashKVResponse:
        async with self.lock:
            h, compact_rev, hash_rev = await self._blocking.run(
                self._s.store.hash_kv, req.revision
            )
        return rpc_pb2.HashKVResponse(
            header=self._s.header(), hash=h, compact_revision=compact_rev, hash_revision=hash_rev
        )

    async def hash(self, req: rpc_pb2.HashRequest) -> rpc_pb2.HashResponse:
        async with self.lock:
            h = await self._blocking.run(backend_hash, self.backend)
        return rpc_pb2.HashResponse(header=self._s.header(), hash=h)

    async def alarm(self, req: rpc_pb2.AlarmRequest) -> rpc_pb2.AlarmResponse:
        if req.action == rpc_pb2.AlarmRequest.GET:
            resp = rpc_pb2.AlarmResponse(
                alarms=[
                    rpc_pb2.AlarmMember(memberID=mid, alarm=a)  # type: ignore[arg-type]
                    for mid, a in self.alarms
                    if req.alarm in (rpc_pb2.NONE, a)
                ]
            )
            self._s.fill_header(resp.header)
            return resp
        proposed: rpc_pb2.AlarmResponse = await self._s.propose_request("alarm", req)
        return proposed

    async def defragment(self, req: rpc_pb2.DefragmentRequest) -> rpc_pb2.DefragmentResponse:
        """Rewrite the backend compacted. Like etcd, nothing is applied while it runs."""
        s = self._s
        async with self.lock, s.raft.apply_gate:
            # Nothing is applied between the copy and the swap (the raft loop waits at the
            # gate), so the copy is the final state; reads go on during the copy.
            await failpoints.hit_async("defragBeforeCopy")
            tmp = await self._blocking.run(self.backend.copy_compacted)
            self.backend.swap_in(tmp, failpoint="defragBeforeRename")
            s.apply_stage.size_in_use = self.backend.size_in_use()
        return rpc_pb2.DefragmentResponse(header=s.header())

    async def move_leader(self, req: rpc_pb2.MoveLeaderRequest) -> rpc_pb2.MoveLeaderResponse:
        s = self._s
        if not s.is_leader:
            raise err(ErrNotLeader)
        target = s.membership.members.get(req.targetID)
        if target is None or target.is_learner:
            raise err(ErrBadLeaderTransferee)
        if req.targetID != s.member_id:
            await s.raft.transfer_leadership(req.targetID, s.request_timeout_s)
        return rpc_pb2.MoveLeaderResponse(header=s.header())

    async def snapshot(
        self, req: rpc_pb2.SnapshotRequest
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """The backend file in 32 KiB chunks, then its SHA-256 as the last blob (etcd's
        framing). The file is LMDB, not bbolt: `etcdctl snapshot restore` cannot read it."""
        fd, path = tempfile.mkstemp(prefix="snapshot-", dir=os.path.dirname(self.backend.path))
        os.close(fd)
        os.unlink(path)
        try:
            async with self.lock:
                await self._blocking.run(self.backend.env.copy, path, True)
                header = self._s.header()
            size = os.path.getsize(path)
            digest = hashlib.sha256()
            sent = 0
            with open(path, "rb") as fh:
                while True:
                    chunk = await self._blocking.run(fh.read, SNAPSHOT_CHUNK)
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

    # --- health ----------------------------------------------------------------------------
    async def health(self, excluded_alarms: set[str], serializable: bool) -> str:
        """etcd's /health: "" when healthy, else the reason ("ALARM NOSPACE", "RAFT NO
        LEADER", "RANGE ERROR:<message>")."""
        for _, alarm in self.alarms:
            name = rpc_pb2.AlarmType.Name(alarm)
            if name not in excluded_alarms:
                return f"ALARM {name}"
        if not self._s.lead:
            return "RAFT NO LEADER"
        try:
            if not serializable:
                await self._s.read_barrier()
            self._s.store.range(rpc_pb2.RangeRequest(key=HEALTH_KEY))
        except EtcdError as exc:
            return f"RANGE ERROR:{exc.message}"
        return ""

    #: the checks of /livez and /readyz (etcd 3.5's names)
    LIVEZ_CHECKS = ("serializable_read",)
    READYZ_CHECKS = ("data_corruption", "serializable_read", "linearizable_read", "non_learner")

    async def check(self, name: str) -> str:
        """One /livez or /readyz check: "" when it passes, else why not."""
        s = self._s
        try:
            if name == "data_corruption":
                if any(a == rpc_pb2.CORRUPT for _, a in self.alarms):
                    return "alarm activated: CORRUPT"
            elif name == "serializable_read":
                s.store.range(rpc_pb2.RangeRequest(key=HEALTH_KEY, serializable=True))
            elif name == "linearizable_read":
                await s.read_barrier()
                s.store.range(rpc_pb2.RangeRequest(key=HEALTH_KEY))
        except EtcdError as exc:
            return exc.message
        return ""
