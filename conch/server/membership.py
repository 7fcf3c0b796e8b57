"""Cluster membership as the applied log says it is, persisted in the `members` bucket.

Values are etcd's JSON shape for a member (`id`, `peerURLs`, `isLearner`, `name`,
`clientURLs`), and the same JSON travels in a ConfChange's context, so every member derives the
same membership from the same log. Removed IDs go to `members_removed`: they may never return.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from conch.backend import Backend, schema
from conch.proto.etcdserverpb import rpc_pb2

_U64 = struct.Struct(">Q")


@dataclass
class MemberInfo:
    id: int
    peer_urls: list[str]
    name: str = ""
    client_urls: list[str] = field(default_factory=list)
    is_learner: bool = False

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"id": self.id, "peerURLs": self.peer_urls}
        if self.is_learner:
            doc["isLearner"] = True
        if self.name:
            doc["name"] = self.name
        if self.client_urls:
            doc["clientURLs"] = self.client_urls
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> MemberInfo:
        doc = json.loads(raw)
        return cls(
            id=int(doc["id"]),
            peer_urls=list(doc.get("peerURLs") or []),
            name=doc.get("name", ""),
            client_urls=list(doc.get("clientURLs") or []),
            is_learner=bool(doc.get("isLearner", False)),
        )

    def to_proto(self) -> rpc_pb2.Member:
        return rpc_pb2.Member(
            ID=self.id,
            name=self.name,
            peerURLs=self.peer_urls,
            clientURLs=self.client_urls,
            isLearner=self.is_learner,
        )


class Membership:
    """The member table. Mutations happen during apply, in the apply transaction."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.members: dict[int, MemberInfo] = {}
        self.removed: set[int] = set()
        with backend.read() as txn:
            for _, raw in txn.cursor(db=backend.db(schema.MEMBERS)):
                m = MemberInfo.from_json(bytes(raw))
                self.members[m.id] = m
            for key, _ in txn.cursor(db=backend.db(schema.MEMBERS_REMOVED)):
                self.removed.add(int(_U64.unpack(bytes(key))[0]))

    def _put(self, txn: Any, m: MemberInfo) -> None:
        txn.put(_U64.pack(m.id), m.to_json(), db=self._backend.db(schema.MEMBERS))
        self.members[m.id] = m

    def add(self, txn: Any, m: MemberInfo) -> None:
        old = self.members.get(m.id)
        if old is not None:  # re-applied after a restart: keep the published attributes
            m.name = m.name or old.name
            m.client_urls = m.client_urls or old.client_urls
        self._put(txn, m)

    def remove(self, txn: Any, member_id: int) -> None:
        self.members.pop(member_id, None)
        txn.delete(_U64.pack(member_id), db=self._backend.db(schema.MEMBERS))
        txn.put(_U64.pack(member_id), b"", db=self._backend.db(schema.MEMBERS_REMOVED))
        self.removed.add(member_id)

    def promote(self, txn: Any, member_id: int) -> None:
        m = self.members.get(member_id)
        if m is not None:
            m.is_learner = False
            self._put(txn, m)

    def update_peer_urls(self, txn: Any, member_id: int, peer_urls: list[str]) -> None:
        m = self.members.get(member_id)
        if m is not None:
            m.peer_urls = list(peer_urls)
            self._put(txn, m)

    def set_attributes(self, txn: Any, member_id: int, name: str, client_urls: list[str]) -> None:
        m = self.members.get(member_id)
        if m is not None:
            m.name = name
            m.client_urls = list(client_urls)
            self._put(txn, m)

    def sorted(self) -> list[MemberInfo]:
        return [self.members[i] for i in sorted(self.members)]

    def voters(self) -> list[int]:
        return sorted(i for i, m in self.members.items() if not m.is_learner)
