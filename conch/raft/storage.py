"""The storage interface raft reads its stable log from, and an in-memory implementation.

Raft only *reads* storage. The application writes to it while handling a Ready (entries, hard
state, snapshot) and compacts it after taking snapshots. Storage indices follow etcd: a dummy
entry at position 0 holds the index and term of the last snapshot, so ``first_index`` is
``snapshot index + 1`` and ``term(first_index - 1)`` still answers.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from operator import attrgetter
from typing import Protocol

from conch.raft.errors import Compacted, SnapOutOfDate, Unavailable
from conch.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata

_DATA = attrgetter("data")


class Storage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the configuration as of the latest snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        """Entries [lo, hi); at least one if any, then more while the payload fits ``max_size``.
        Raises Compacted if lo <= snapshot index, Unavailable if the range is past the end."""
        ...

    def term(self, i: int) -> int:
        """Term of entry i, for snapshot index <= i <= last_index (Compacted / Unavailable)."""
        ...

    def last_index(self) -> int:
        ...

    def first_index(self) -> int:
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (SnapshotTemporarilyUnavailable if not ready yet)."""
        ...


class MemoryStorage:
    """Storage kept in memory: the reference implementation and the simulator's "disk"."""

    def __init__(self, conf_state: ConfState | None = None) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot(metadata=SnapshotMetadata(conf_state=conf_state or ConfState()))
        # _ents[0] is the dummy entry: index and term of the snapshot.
        self._ents: list[Entry] = [Entry()]

    # --- Storage ---

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def term(self, i: int) -> int:
        ents = self._ents
        offset = ents[0].index
        if i < offset:
            raise Compacted(f"index {i} < first index {offset + 1}")
        if i - offset >= len(ents):
            raise Unavailable(f"index {i} > last index {offset + len(ents) - 1}")
        return ents[i - offset].term

    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        ents = self._ents
        offset = ents[0].index
        if lo <= offset:
            raise Compacted(f"entries from {lo}: compacted up to {offset}")
        if hi > offset + len(ents):
            raise Unavailable(f"entries up to {hi - 1}: last index {self.last_index()}")
        if len(ents) == 1:
            raise Unavailable("no entries")
        out = ents[lo - offset:hi - offset]
        return limit_size(out, max_size)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- writes by the application ---

    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = HardState(hs.term, hs.vote, hs.commit)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log by ``snap`` (a snapshot received from the leader)."""
        if snap.metadata.index <= self._snapshot.metadata.index:
            raise SnapOutOfDate(f"snapshot {snap.metadata.index} is out of date")
        self._snapshot = snap
        self._ents = [Entry(term=snap.metadata.term, index=snap.metadata.index)]

    def create_snapshot(self, i: int, cs: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of applied index i (then ``compact``)."""
        if i <= self._snapshot.metadata.index:
            raise SnapOutOfDate(f"snapshot at {i} is out of date")
        if i > self.last_index():
            raise ValueError(f"snapshot {i} is beyond last index {self.last_index()}")
        cs = cs if cs is not None else self._snapshot.metadata.conf_state
        self._snapshot = Snapshot(data, SnapshotMetadata(cs, i, self.term(i)))
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Discard entries before ``compact_index``; it becomes the dummy entry."""
        offset = self._ents[0].index
        if compact_index <= offset:
            raise Compacted(f"already compacted to {offset}")
        if compact_index > self.last_index():
            raise ValueError(f"compact {compact_index} beyond last index {self.last_index()}")
        i = compact_index - offset
        dummy = Entry(term=self._ents[i].term, index=self._ents[i].index)
        del self._ents[1:i + 1]
        self._ents[0] = dummy

    def append(self, entries: list[Entry]) -> None:
        """Persist entries; an entry at index i replaces the stored entries at i and after."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # all already compacted
        if entries[0].index < first:
            entries = entries[first - entries[0].index:]
        offset = entries[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise ValueError(
                f"missing log entries: last {self.last_index()}, appending at {entries[0].index}"
            )
        del self._ents[offset:]
        self._ents.extend(entries)


def limit_size(entries: list[Entry], max_size: int) -> list[Entry]:
    """The longest prefix whose payload fits ``max_size``, but never less than one entry."""
    if len(entries) <= 1:
        return entries
    # C-level loops: running payload sizes, then the cut point by binary search.
    sizes = list(accumulate(map(len, map(_DATA, entries))))
    if sizes[-1] <= max_size:
        return entries
    k = max(1, bisect_right(sizes, max_size))
    return entries[:k]
