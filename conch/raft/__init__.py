"""conch.raft: the raft consensus core, a pure deterministic state machine (sans-IO).

Modelled on etcd-io/raft's RawNode. The core never touches sockets, files, threads, asyncio or
clocks: time is ``tick()``, input is ``step(message)`` and the API calls below, output is a
``Ready``. Randomness (election timeouts) comes only from the ``random.Random`` passed in
``Config.rng``, so a run is reproducible from its seed.

API (``RawNode``): ``tick``, ``step``, ``propose`` / ``propose_batch``, ``propose_conf_change``,
``apply_conf_change``, ``read_index``, ``transfer_leader``, ``campaign``, ``forget_leader``,
``report_unreachable``, ``report_snapshot``, ``has_ready`` / ``ready`` / ``advance``, ``status``.

The Ready contract
------------------
Whenever ``has_ready()`` is true, call ``ready()`` and handle the Ready *in this order*:

1. **Persist** ``rd.snapshot`` (if any), then ``rd.entries`` (an entry at index i replaces every
   stored entry at index >= i), then ``rd.hard_state`` (term, vote and commit written as one
   atomic record: a crash must never keep a new term without its vote or vice versa). If
   ``rd.must_sync`` is set the writes must be durable (fsync) before step 2.
2. **Send** ``rd.messages``. A follower (or candidate) must not send before step 1 completed:
   a vote or an append acknowledgement promises that the state it describes survives a crash.
   A leader may send its messages before or while it persists (thesis §10.2.1): its own copy of
   new entries counts toward a commit only once ``advance()`` reports them durable, so every
   commit index raft computes is durable on a quorum, with or without the leader. Messages may
   be lost, duplicated or reordered by the transport; raft tolerates all three. If a peer is
   known to be unreachable, call ``report_unreachable``; after shipping a MsgSnap, call
   ``report_snapshot``.
3. **Apply** the snapshot (if any) to the state machine, then ``rd.committed_entries`` in order.
   For an entry of type EntryConfChange / EntryConfChangeV2, decode it
   (``conf_change_from_entry``) and call ``apply_conf_change``: membership changes take effect
   on apply. Serve ``rd.read_states`` once the applied index reaches each one's index.
4. Call **``advance()``**. Only then may ``ready()`` be called again. ``tick``, ``step`` and
   proposals may be called between ``ready()`` and ``advance()``.

Proposals can be refused with ``ProposalDropped`` (no leader, transfer in progress, removed,
uncommitted log full) and accepted proposals can still be lost on a leader change: callers retry
on timeout. Reads without a leader are dropped silently; callers retry.

Storage: raft reads persisted state through the ``Storage`` protocol; ``MemoryStorage`` is the
in-memory implementation. The application writes to storage in step 1 and compacts it
(``create_snapshot`` + ``compact``) whenever it likes; a follower that needs a compacted entry is
sent the snapshot instead.

Safety mechanisms: PreVote, CheckQuorum (the leader steps down without a live quorum; followers in
lease ignore disruptive votes), the current-term commit rule, ReadIndex with quorum confirmation
(queued until the leader commits an entry of its own term, batched into one heartbeat round per
Ready), lease-based reads (requires CheckQuorum), leadership transfer with catch-up and TimeoutNow,
learners, one-at-a-time and joint-consensus (ConfChangeV2) membership changes.

Only ``conch.raft.codec`` knows about the generated ``raftpb`` protobuf classes; this package
imports nothing else from conch.
"""

from conch.raft.errors import (
    Compacted,
    ConfChangeError,
    ProposalDropped,
    RaftError,
    SnapOutOfDate,
    SnapshotTemporarilyUnavailable,
    StorageError,
    Unavailable,
)
from conch.raft.raft import Config
from conch.raft.rawnode import RawNode, Ready, Status
from conch.raft.read_only import ReadOnlyOption
from conch.raft.storage import MemoryStorage, Storage
from conch.raft.types import (
    NONE,
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfChangeV2,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
    conf_change_from_entry,
)

__all__ = [
    "NONE",
    "Compacted",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeSingle",
    "ConfChangeTransition",
    "ConfChangeType",
    "ConfChangeV2",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "ReadOnlyOption",
    "ReadState",
    "Ready",
    "SnapOutOfDate",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotTemporarilyUnavailable",
    "SoftState",
    "StateType",
    "Status",
    "Storage",
    "StorageError",
    "Unavailable",
    "conf_change_from_entry",
]
