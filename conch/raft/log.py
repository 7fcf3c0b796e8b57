"""The raft log: stable entries (in Storage) followed by unstable ones (not yet persisted).

``Unstable`` holds what the application has not persisted yet: at most one incoming snapshot and
a run of entries. Invariant: ``entries[k]`` has log index ``offset + k``; if a snapshot is held,
``offset == snapshot index + 1``. Entries move to storage when the application persists a Ready
and calls ``advance`` (``stable_to``).

``RaftLog`` stitches both together and tracks two cursors: ``committed`` (known durable on a
quorum) and ``applied`` (handed to the application). ``applied <= committed`` always.
"""

from __future__ import annotations

from conch.raft.errors import Compacted, Unavailable
from conch.raft.storage import Storage, limit_size
from conch.raft.types import Entry, Snapshot

NO_LIMIT = 1 << 62


class Unstable:
    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        off = self.offset
        if i < off:
            snap = self.snapshot
            if snap is not None and snap.metadata.index == i:
                return snap.metadata.term
            return None
        k = i - off
        if k < len(self.entries):
            return self.entries[k].term
        return None

    def stable_to(self, i: int, t: int) -> None:
        """Entries up to (i, t) are persisted. Ignored if the entry was replaced meanwhile."""
        k = i - self.offset
        if k < 0 or k >= len(self.entries) or self.entries[k].term != t:
            return
        del self.entries[:k + 1]
        self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.metadata.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry]) -> None:
        after = ents[0].index
        end = self.offset + len(self.entries)
        if after == end:
            self.entries.extend(ents)
        elif after <= self.offset:
            # Replaces every unstable entry (and possibly stable ones: storage truncates them
            # when these are persisted).
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - self.offset:]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        assert self.offset <= lo <= hi <= self.offset + len(self.entries), (lo, hi, self.offset)
        return self.entries[lo - self.offset:hi - self.offset]


class RaftLog:
    def __init__(self, storage: Storage, max_applying_size: int = NO_LIMIT) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = first - 1
        self.applying = first - 1
        self.applied = first - 1
        self.max_applying_size = max_applying_size

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed} applied={self.applied} "
            f"unstable.offset={self.unstable.offset} len={len(self.unstable.entries)})"
        )

    # --- indices and terms ---

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def term(self, i: int) -> int:
        """Term of entry i; raises Compacted / Unavailable outside [first_index - 1, last]."""
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        if i >= self.unstable.offset:
            raise Unavailable(f"index {i} beyond last index")
        snap = self.unstable.snapshot
        if snap is not None and i < snap.metadata.index:
            raise Compacted(f"index {i} is before the pending snapshot")
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        try:
            return self.term(i)
        except (Compacted, Unavailable):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except (Compacted, Unavailable):
            return False

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        """Raft §5.4.1: a candidate's log (last index, last term) is at least as up to date."""
        last_term = self.last_term()
        return term > last_term or (term == last_term and lasti >= self.last_index())

    # --- appending ---

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: list[Entry]
    ) -> int | None:
        """Follower side of MsgApp: returns the last index of the new entries, or None if the
        entry before them (index, log_term) does not match our log (the leader must back off)."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise AssertionError(f"entry {ci} conflicts with committed entry {self.committed}")
            self.append(ents[ci - index - 1:])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise AssertionError(f"append after {after} is below committed {self.committed}")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry that is new or whose term differs from ours, else 0."""
        if not ents:
            return 0
        last = self.last_index()
        if ents[0].index > last:
            return ents[0].index  # fast path: pure append
        for e in ents:
            if e.index > last:
                return e.index
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, and that term (0 if unknown).
        Used for the reject hint so the leader skips a whole term of conflicting entries."""
        first = self.first_index()
        for _ in range(index + 1):  # bounded walk backwards
            if index < first - 1:
                return index, 0
            try:
                our = self.term(index)
            except (Compacted, Unavailable):
                return index, 0
            if our <= term:
                return index, our
            index -= 1
        return index, 0

    # --- commit / apply ---

    def commit_to(self, to: int) -> None:
        if to > self.committed:
            if to > self.last_index():
                raise AssertionError(f"commit {to} beyond last index {self.last_index()}")
            self.committed = to

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Raft §5.4.2: only an entry of the current term is committed by counting replicas."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def has_next_committed_ents(self) -> bool:
        return self.applying < self.committed and self.unstable.snapshot is None

    def next_committed_ents(self) -> list[Entry]:
        """Committed entries not yet handed to the application (after a pending snapshot)."""
        if not self.has_next_committed_ents():
            return []
        return self.slice(self.applying + 1, self.committed + 1, self.max_applying_size)

    def accept_applying(self, i: int) -> None:
        assert self.applying <= i <= self.committed, (self.applying, i, self.committed)
        self.applying = i

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        assert self.applied <= i <= self.committed, (self.applied, i, self.committed)
        self.applied = i
        if self.applying < i:
            self.applying = i

    def stable_to(self, i: int, t: int) -> None:
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        self.unstable.stable_snap_to(i)

    def has_pending_snapshot(self) -> bool:
        return self.unstable.snapshot is not None

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.metadata.index
        self.unstable.restore(snap)

    # --- reading entries ---

    def entries(self, i: int, max_size: int) -> list[Entry]:
        last = self.last_index()
        if i > last:
            return []
        return self.slice(i, last + 1, max_size)

    def all_entries(self) -> list[Entry]:
        return self.entries(self.first_index(), NO_LIMIT)

    def slice(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        """Entries [lo, hi), size-limited (at least one). Raises Compacted if lo is compacted."""
        if lo > hi:
            raise AssertionError(f"invalid slice {lo} > {hi}")
        first = self.first_index()
        if lo < first:
            raise Compacted(f"slice from {lo} but first index is {first}")
        if hi > self.last_index() + 1:
            raise AssertionError(f"slice [{lo}, {hi}) out of bound [{first}, {self.last_index()}]")
        if lo == hi:
            return []
        off = self.unstable.offset
        if lo >= off:
            return limit_size(self.unstable.slice(lo, hi), max_size)
        stored = self.storage.entries(lo, min(hi, off), max_size)
        if len(stored) < min(hi, off) - lo:
            return stored  # size limit reached inside storage
        if hi <= off:
            return stored
        return limit_size(stored + self.unstable.slice(off, hi), max_size)
