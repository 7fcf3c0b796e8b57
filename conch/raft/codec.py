"""Conversion between the core's value types and the generated ``raftpb`` protobuf messages.

The transport ships ``raftpb.Message`` bytes (etcd's peer wire format) and the WAL stores
``raftpb.Entry`` / ``raftpb.HardState`` / snapshot metadata. etcd encodes with gogoproto, which
writes every non-nullable scalar even when zero and omits nil bytes/pointers; we set fields the
same way so our bytes match etcd's.
"""

from __future__ import annotations

from conch.proto.raftpb import raft_pb2 as pb
from conch.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeV2,
    ConfState,
    Entry,
    HardState,
    Message,
    Snapshot,
    SnapshotMetadata,
)


def entry_to_pb(e: Entry) -> pb.Entry:
    out = pb.Entry(Term=e.term, Index=e.index, Type=e.type)  # type: ignore[arg-type]
    if e.data:
        out.Data = e.data
    return out


def entry_from_pb(p: pb.Entry) -> Entry:
    return Entry(p.Term, p.Index, int(p.Type), p.Data)


def hard_state_to_pb(hs: HardState) -> pb.HardState:
    return pb.HardState(term=hs.term, vote=hs.vote, commit=hs.commit)


def hard_state_from_pb(p: pb.HardState) -> HardState:
    return HardState(p.term, p.vote, p.commit)


def conf_state_to_pb(cs: ConfState) -> pb.ConfState:
    return pb.ConfState(voters=cs.voters, learners=cs.learners,
                        voters_outgoing=cs.voters_outgoing, learners_next=cs.learners_next,
                        auto_leave=cs.auto_leave)


def conf_state_from_pb(p: pb.ConfState) -> ConfState:
    return ConfState(list(p.voters), list(p.learners), list(p.voters_outgoing),
                     list(p.learners_next), p.auto_leave)


def snapshot_to_pb(s: Snapshot) -> pb.Snapshot:
    meta = pb.SnapshotMetadata(conf_state=conf_state_to_pb(s.metadata.conf_state),
                               index=s.metadata.index, term=s.metadata.term)
    out = pb.Snapshot(metadata=meta)
    if s.data:
        out.data = s.data
    return out


def snapshot_from_pb(p: pb.Snapshot) -> Snapshot:
    m = p.metadata
    return Snapshot(p.data, SnapshotMetadata(conf_state_from_pb(m.conf_state), m.index, m.term))


def message_to_pb(m: Message) -> pb.Message:
    out = pb.Message(
        type=m.type,  # type: ignore[arg-type]
        to=m.to,
        term=m.term,
        logTerm=m.log_term,
        index=m.index,
        entries=[entry_to_pb(e) for e in m.entries],
        commit=m.commit,
        vote=m.vote,
        reject=m.reject,
        rejectHint=m.reject_hint,
    )
    setattr(out, "from", m.frm)  # noqa: B010 - "from" is a Python keyword
    if m.snapshot is not None:
        out.snapshot.CopyFrom(snapshot_to_pb(m.snapshot))
    if m.context:
        out.context = m.context
    return out


def message_from_pb(p: pb.Message) -> Message:
    return Message(
        int(p.type),
        to=p.to,
        frm=getattr(p, "from"),
        term=p.term,
        log_term=p.logTerm,
        index=p.index,
        entries=[entry_from_pb(e) for e in p.entries],
        commit=p.commit,
        vote=p.vote,
        snapshot=snapshot_from_pb(p.snapshot) if p.HasField("snapshot") else None,
        reject=p.reject,
        reject_hint=p.rejectHint,
        context=p.context,
    )


def encode_message(m: Message) -> bytes:
    """``raftpb.Message`` wire bytes for the peer transport."""
    return message_to_pb(m).SerializeToString()


def decode_message(data: bytes) -> Message:
    p = pb.Message()
    p.ParseFromString(data)
    return message_from_pb(p)


def conf_change_to_pb(cc: ConfChange) -> pb.ConfChange:
    return pb.ConfChange(id=cc.id, type=cc.type, node_id=cc.node_id,  # type: ignore[arg-type]
                         context=cc.context or None)


def conf_change_v2_to_pb(cc: ConfChangeV2) -> pb.ConfChangeV2:
    out = pb.ConfChangeV2(transition=cc.transition)  # type: ignore[arg-type]
    for c in cc.changes:
        out.changes.add(type=c.type, node_id=c.node_id)
    if cc.context:
        out.context = cc.context
    return out


def conf_change_v2_from_pb(p: pb.ConfChangeV2) -> ConfChangeV2:
    return ConfChangeV2(int(p.transition),
                        [ConfChangeSingle(int(c.type), c.node_id) for c in p.changes], p.context)
