"""Plain value types of the raft core: messages, entries, states, configuration changes.

These mirror etcd's ``raftpb`` messages field for field (same names, same enum numbers), but are
lightweight slotted Python classes because the core creates and inspects them on every step.
``conch.raft.codec`` converts them to and from the generated protobuf classes at the transport
boundary. Conf-change payloads inside entries are encoded here, by hand, in the exact protobuf
wire format of ``raftpb.ConfChange`` / ``raftpb.ConfChangeV2``, so the core needs no generated code.

Convention: every instance is treated as immutable once it has been handed to the core or
returned from it (entries are shared between the log, storage and messages).
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterable, Sequence

NONE = 0
"""The "no node" id, as in etcd (node ids are never zero)."""


class MessageType(enum.IntEnum):
    MsgHup = 0
    MsgBeat = 1
    MsgProp = 2
    MsgApp = 3
    MsgAppResp = 4
    MsgVote = 5
    MsgVoteResp = 6
    MsgSnap = 7
    MsgHeartbeat = 8
    MsgHeartbeatResp = 9
    MsgUnreachable = 10
    MsgSnapStatus = 11
    MsgCheckQuorum = 12
    MsgTransferLeader = 13
    MsgTimeoutNow = 14
    MsgReadIndex = 15
    MsgReadIndexResp = 16
    MsgPreVote = 17
    MsgPreVoteResp = 18
    MsgStorageAppend = 19
    MsgStorageAppendResp = 20
    MsgStorageApply = 21
    MsgStorageApplyResp = 22
    MsgForgetLeader = 23


class EntryType(enum.IntEnum):
    EntryNormal = 0
    EntryConfChange = 1
    EntryConfChangeV2 = 2


class ConfChangeType(enum.IntEnum):
    ConfChangeAddNode = 0
    ConfChangeRemoveNode = 1
    ConfChangeUpdateNode = 2
    ConfChangeAddLearnerNode = 3


class ConfChangeTransition(enum.IntEnum):
    Auto = 0
    JointImplicit = 1
    JointExplicit = 2


class StateType(enum.IntEnum):
    Follower = 0
    Candidate = 1
    Leader = 2
    PreCandidate = 3


LOCAL_MESSAGES = frozenset(
    {
        MessageType.MsgHup,
        MessageType.MsgBeat,
        MessageType.MsgUnreachable,
        MessageType.MsgSnapStatus,
        MessageType.MsgCheckQuorum,
        MessageType.MsgStorageAppend,
        MessageType.MsgStorageAppendResp,
        MessageType.MsgStorageApply,
        MessageType.MsgStorageApplyResp,
    }
)

RESPONSE_MESSAGES = frozenset(
    {
        MessageType.MsgAppResp,
        MessageType.MsgVoteResp,
        MessageType.MsgHeartbeatResp,
        MessageType.MsgUnreachable,
        MessageType.MsgReadIndexResp,
        MessageType.MsgPreVoteResp,
    }
)


class Entry:
    """One log entry. ``data`` is opaque to raft except for conf-change entry types."""

    __slots__ = ("term", "index", "type", "data")

    def __init__(
        self, term: int = 0, index: int = 0, type: int = 0, data: bytes = b""
    ) -> None:
        self.term = term
        self.index = index
        self.type = type
        self.data = data

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Entry)
            and self.term == other.term
            and self.index == other.index
            and self.type == other.type
            and self.data == other.data
        )

    def __hash__(self) -> int:
        return hash((self.term, self.index, self.type, self.data))

    def __repr__(self) -> str:
        kind = "" if self.type == 0 else f" {EntryType(self.type).name}"
        return f"Entry({self.term}/{self.index}{kind} {self.data!r})"


_DATA = operator.attrgetter("data")


def payload_size(entries: Iterable[Entry]) -> int:
    """Bytes of entry payloads: what the size limits (max_size_per_msg, ...) count."""
    return sum(map(len, map(_DATA, entries)))


class ConfState:
    __slots__ = ("voters", "learners", "voters_outgoing", "learners_next", "auto_leave")

    def __init__(
        self,
        voters: Sequence[int] = (),
        learners: Sequence[int] = (),
        voters_outgoing: Sequence[int] = (),
        learners_next: Sequence[int] = (),
        auto_leave: bool = False,
    ) -> None:
        self.voters = sorted(voters)
        self.learners = sorted(learners)
        self.voters_outgoing = sorted(voters_outgoing)
        self.learners_next = sorted(learners_next)
        self.auto_leave = auto_leave

    def _key(self) -> tuple[list[int], list[int], list[int], list[int], bool]:
        return (self.voters, self.learners, self.voters_outgoing, self.learners_next,
                self.auto_leave)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfState) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(repr(self._key()))

    def __repr__(self) -> str:
        s = f"voters={self.voters}"
        if self.voters_outgoing:
            s += f"&&{self.voters_outgoing}"
        if self.learners:
            s += f" learners={self.learners}"
        if self.learners_next:
            s += f" learners_next={self.learners_next}"
        if self.auto_leave:
            s += " autoleave"
        return f"ConfState({s})"


class SnapshotMetadata:
    __slots__ = ("conf_state", "index", "term")

    def __init__(self, conf_state: ConfState | None = None, index: int = 0, term: int = 0) -> None:
        self.conf_state = conf_state if conf_state is not None else ConfState()
        self.index = index
        self.term = term

    def __repr__(self) -> str:
        return f"SnapshotMetadata({self.index}/{self.term} {self.conf_state})"


class Snapshot:
    __slots__ = ("data", "metadata")

    def __init__(self, data: bytes = b"", metadata: SnapshotMetadata | None = None) -> None:
        self.data = data
        self.metadata = metadata if metadata is not None else SnapshotMetadata()

    def is_empty(self) -> bool:
        return self.metadata.index == 0

    def __repr__(self) -> str:
        return f"Snapshot(index={self.metadata.index} term={self.metadata.term})"


class HardState:
    """What must be durable before messages of the same Ready are sent: term and vote together
    (one record, so a crash can never separate them), plus the commit index."""

    __slots__ = ("term", "vote", "commit")

    def __init__(self, term: int = 0, vote: int = 0, commit: int = 0) -> None:
        self.term = term
        self.vote = vote
        self.commit = commit

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HardState)
            and self.term == other.term
            and self.vote == other.vote
            and self.commit == other.commit
        )

    def __hash__(self) -> int:
        return hash((self.term, self.vote, self.commit))

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == 0 and self.commit == 0

    def __repr__(self) -> str:
        return f"HardState(term={self.term} vote={self.vote} commit={self.commit})"


class SoftState:
    """Volatile state, reported in a Ready when it changes; never persisted."""

    __slots__ = ("lead", "raft_state")

    def __init__(self, lead: int = 0, raft_state: StateType = StateType.Follower) -> None:
        self.lead = lead
        self.raft_state = raft_state

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SoftState)
            and self.lead == other.lead
            and self.raft_state == other.raft_state
        )

    def __hash__(self) -> int:
        return hash((self.lead, self.raft_state))

    def __repr__(self) -> str:
        return f"SoftState(lead={self.lead} {self.raft_state.name})"


class ReadState:
    """The answer to ``read_index(ctx)``: serve the read once applied index >= ``index``."""

    __slots__ = ("index", "request_ctx")

    def __init__(self, index: int, request_ctx: bytes) -> None:
        self.index = index
        self.request_ctx = request_ctx

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ReadState)
            and self.index == other.index
            and self.request_ctx == other.request_ctx
        )

    def __hash__(self) -> int:
        return hash((self.index, self.request_ctx))

    def __repr__(self) -> str:
        return f"ReadState({self.index} {self.request_ctx!r})"


class Message:
    __slots__ = (
        "type", "to", "frm", "term", "log_term", "index", "entries", "commit",
        "vote", "snapshot", "reject", "reject_hint", "context",
    )

    def __init__(
        self,
        type: int,
        to: int = 0,
        frm: int = 0,
        term: int = 0,
        log_term: int = 0,
        index: int = 0,
        entries: list[Entry] | None = None,
        commit: int = 0,
        vote: int = 0,
        snapshot: Snapshot | None = None,
        reject: bool = False,
        reject_hint: int = 0,
        context: bytes = b"",
    ) -> None:
        self.type = type
        self.to = to
        self.frm = frm
        self.term = term
        self.log_term = log_term
        self.index = index
        self.entries: list[Entry] = entries if entries is not None else []
        self.commit = commit
        self.vote = vote
        self.snapshot = snapshot
        self.reject = reject
        self.reject_hint = reject_hint
        self.context = context

    def __repr__(self) -> str:
        parts = [f"{self.frm}->{self.to} {MessageType(self.type).name} Term:{self.term}"]
        parts.append(f"Log:{self.log_term}/{self.index}")
        if self.commit:
            parts.append(f"Commit:{self.commit}")
        if self.reject:
            parts.append(f"Rejected (Hint: {self.reject_hint})")
        if self.entries:
            parts.append(f"Entries:{self.entries!r}")
        if self.snapshot is not None:
            parts.append(f"{self.snapshot!r}")
        if self.context:
            parts.append(f"Context:{self.context!r}")
        return " ".join(parts)


# --- conf changes ------------------------------------------------------------------------------


class ConfChangeSingle:
    __slots__ = ("type", "node_id")

    def __init__(self, type: int, node_id: int) -> None:
        self.type = type
        self.node_id = node_id

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ConfChangeSingle)
            and self.type == other.type
            and self.node_id == other.node_id
        )

    def __hash__(self) -> int:
        return hash((self.type, self.node_id))

    def __repr__(self) -> str:
        name = ConfChangeType(self.type).name.removeprefix("ConfChange")
        return f"{name}({self.node_id})"


class ConfChange:
    """etcd's v1 conf change: exactly one node added, removed or made a learner."""

    __slots__ = ("type", "node_id", "context", "id")

    def __init__(self, type: int, node_id: int, context: bytes = b"", id: int = 0) -> None:
        self.type = type
        self.node_id = node_id
        self.context = context
        self.id = id

    def as_v2(self) -> ConfChangeV2:
        return ConfChangeV2(
            changes=[ConfChangeSingle(self.type, self.node_id)], context=self.context
        )

    def marshal(self) -> bytes:
        # gogoproto emits every non-nullable proto2 field, zero or not.
        out = bytearray()
        _put_key(out, 1, 0)
        _put_uvarint(out, self.id)
        _put_key(out, 2, 0)
        _put_uvarint(out, self.type)
        _put_key(out, 3, 0)
        _put_uvarint(out, self.node_id)
        if self.context:
            _put_key(out, 4, 2)
            _put_uvarint(out, len(self.context))
            out += self.context
        return bytes(out)

    @classmethod
    def unmarshal(cls, data: bytes) -> ConfChange:
        cc = cls(0, 0)
        for field, value in _fields(data):
            if field == 1 and isinstance(value, int):
                cc.id = value
            elif field == 2 and isinstance(value, int):
                cc.type = value
            elif field == 3 and isinstance(value, int):
                cc.node_id = value
            elif field == 4 and isinstance(value, bytes):
                cc.context = value
        return cc

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ConfChange)
            and self.type == other.type
            and self.node_id == other.node_id
            and self.context == other.context
            and self.id == other.id
        )

    def __hash__(self) -> int:
        return hash((self.type, self.node_id, self.context, self.id))

    def __repr__(self) -> str:
        return f"ConfChange({ConfChangeSingle(self.type, self.node_id)!r})"


class ConfChangeV2:
    """A batch of changes; more than one voter change (or an explicit transition) means joint
    consensus. An empty ConfChangeV2 asks to leave the joint configuration."""

    __slots__ = ("transition", "changes", "context")

    def __init__(
        self,
        transition: int = ConfChangeTransition.Auto,
        changes: Sequence[ConfChangeSingle] = (),
        context: bytes = b"",
    ) -> None:
        self.transition = transition
        self.changes = list(changes)
        self.context = context

    def as_v2(self) -> ConfChangeV2:
        return self

    def enter_joint(self) -> tuple[bool, bool]:
        """(auto_leave, use_joint): joint consensus is used for an explicit transition or for more
        than one change; auto_leave says whether raft leaves the joint config by itself."""
        if self.transition != ConfChangeTransition.Auto or len(self.changes) > 1:
            if self.transition in (ConfChangeTransition.Auto, ConfChangeTransition.JointImplicit):
                return True, True
            if self.transition == ConfChangeTransition.JointExplicit:
                return False, True
            raise ValueError(f"unknown transition {self.transition}")
        return False, False

    def leave_joint(self) -> bool:
        # The context is ignored, as in etcd: an empty change list with the Auto transition.
        return self.transition == ConfChangeTransition.Auto and not self.changes

    def marshal(self) -> bytes:
        out = bytearray()
        _put_key(out, 1, 0)
        _put_uvarint(out, self.transition)
        for c in self.changes:
            inner = bytearray()
            _put_key(inner, 1, 0)
            _put_uvarint(inner, c.type)
            _put_key(inner, 2, 0)
            _put_uvarint(inner, c.node_id)
            _put_key(out, 2, 2)
            _put_uvarint(out, len(inner))
            out += inner
        if self.context:
            _put_key(out, 3, 2)
            _put_uvarint(out, len(self.context))
            out += self.context
        return bytes(out)

    @classmethod
    def unmarshal(cls, data: bytes) -> ConfChangeV2:
        cc = cls()
        for field, value in _fields(data):
            if field == 1 and isinstance(value, int):
                cc.transition = value
            elif field == 2 and isinstance(value, bytes):
                single = ConfChangeSingle(0, 0)
                for f2, v2 in _fields(value):
                    if f2 == 1 and isinstance(v2, int):
                        single.type = v2
                    elif f2 == 2 and isinstance(v2, int):
                        single.node_id = v2
                cc.changes.append(single)
            elif field == 3 and isinstance(value, bytes):
                cc.context = value
        return cc

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ConfChangeV2)
            and self.transition == other.transition
            and self.changes == other.changes
            and self.context == other.context
        )

    def __hash__(self) -> int:
        return hash((self.transition, tuple(self.changes), self.context))

    def __repr__(self) -> str:
        return f"ConfChangeV2({ConfChangeTransition(self.transition).name} {self.changes!r})"


AnyConfChange = ConfChange | ConfChangeV2


def conf_change_from_entry(entry: Entry) -> AnyConfChange:
    """Decode the conf change carried by a conf-change entry."""
    if entry.type == EntryType.EntryConfChange:
        return ConfChange.unmarshal(entry.data)
    if entry.type == EntryType.EntryConfChangeV2:
        return ConfChangeV2.unmarshal(entry.data)
    raise ValueError(f"entry {entry!r} is not a conf change")


# --- minimal protobuf wire helpers (varint and length-delimited fields only) --------------------


def _put_key(out: bytearray, field: int, wire_type: int) -> None:
    _put_uvarint(out, (field << 3) | wire_type)


def _put_uvarint(out: bytearray, value: int) -> None:
    assert value >= 0, value
    for _ in range(10):  # a uint64 varint is at most 10 bytes
        if value < 0x80:
            out.append(value)
            return
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    raise ValueError("varint too large")


def _get_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
    raise ValueError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    for _ in range(len(data) + 1):  # each field consumes at least one byte
        if pos >= len(data):
            return out
        key, pos = _get_uvarint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _get_uvarint(data, pos)
            out.append((field, value))
        elif wire_type == 2:
            length, pos = _get_uvarint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            out.append((field, bytes(data[pos:pos + length])))
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    return out
