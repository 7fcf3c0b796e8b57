"""Watch validation: etcd's watch guarantees checked against the final history.

Reference event log
-------------------
The events of each revision are reconstructed from (1) acknowledged writes: an ok put, an ok
single-key delete with deleted > 0, an ok txn's taken branch (its revision is the response's);
and (2) every event any watcher saw. A revision is *complete* when an acknowledged operation
fully determines its events (a put, a single-key delete with a count, a txn whose branch is only
those); revisions produced by writes with unknown outcome, lease revokes/expiries and range
deletes are known only through watchers. Disagreements are violations: two sources give a
different event for the same (revision, key), or a watcher reports an event on a key at a
complete revision that did not write that key.

Per watch (one create request and the responses it got)
-------------------------------------------------------
- **filters honoured**: every event is in the watched key range; no put with NOPUT, no delete
  with NODELETE; no event below the start revision (etcd#20221).
- **ordered**: event revisions never decrease along the watch; header revisions never decrease;
  the created response (if recorded) precedes every event; nothing follows a cancellation.
- **unique**: no (revision, key) delivered twice.
- **atomic**: a revision's events are not split across responses, except across a response
  marked ``fragment``.
- **reliable**: with start S (the request's start revision, or the created response's header
  revision + 1 for "from now") and L the highest revision the watch reported (last event or
  progress notification), every reference event in [S, L] that matches the range and filters was
  delivered. A watch cancelled for compaction is checked only up to what it delivered.
- **bookmarkable**: a progress notification at revision P comes after every matching reference
  event <= P, and no event <= P comes after it.
- **resumable**: a watch recorded as resuming another starts no later than one past the last
  revision the other reported.
- **prev_kv** (when requested): a prev_kv must be the key's previous put (the latest reference
  event on the key below the event's revision must be that put); a missing prev_kv is an error
  when the reference says the key existed and every revision in between is complete and not
  compacted. **IsCreate**: a put with version 1 has create_revision == mod_revision and no
  prev_kv; a later version has a prev_kv (unless compacted).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .history import OK, Event, History, WatchRecord, WatchRequest, in_range
from .report import CheckResult
from .set_check import writes

Entry = tuple[str, str]  # (type, value)


@dataclass
class EventLog:
    events: dict[int, dict[str, Entry]] = field(default_factory=dict)
    complete: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    _revs: list[int] = field(default_factory=list)

    def add(self, rev: int, key: str, entry: Entry, source: str) -> None:
        at = self.events.setdefault(rev, {})
        have = at.get(key)
        if have is None:
            if rev in self.complete:
                self.problems.append(
                    f"{source}: {entry[0]} {key} at revision {rev}, but the acknowledged write "
                    f"of that revision did not touch {key}"
                )
                return
            at[key] = entry
        elif have != entry:
            self.problems.append(
                f"{source}: {entry[0]} {key}={entry[1]!r} at revision {rev} disagrees with "
                f"{have[0]} {key}={have[1]!r} known for that revision"
            )

    def finish(self) -> None:
        self._revs = sorted(self.events)

    def previous(self, key: str, rev: int) -> tuple[int, Entry] | None:
        """The latest known event on ``key`` below ``rev``."""
        i = bisect.bisect_left(self._revs, rev) - 1
        while i >= 0:
            r = self._revs[i]
            e = self.events[r].get(key)
            if e is not None:
                return r, e
            i -= 1
        return None

    def matching(self, req: WatchRequest, lo: int, hi: int) -> list[tuple[int, str]]:
        i = bisect.bisect_left(self._revs, lo)
        out = []
        while i < len(self._revs) and self._revs[i] <= hi:
            r = self._revs[i]
            for k, (typ, _) in self.events[r].items():
                if _matches(req, k, typ):
                    out.append((r, k))
            i += 1
        return out


def _matches(req: WatchRequest, key: str, typ: str) -> bool:
    if not in_range(key, req.key, req.end):
        return False
    if typ == "put" and "noput" in req.filters:
        return False
    return not (typ == "delete" and "nodelete" in req.filters)


def build_log(history: History) -> EventLog:
    log = EventLog()
    for op in history.operations:
        if op.status != OK:
            continue
        ws = list(writes(op))
        if not ws or not all(w.acked and w.revision is not None and w.end is None for w in ws):
            continue
        rev = ws[0].revision
        assert rev is not None
        for w in ws:
            log.add(rev, w.key, (w.kind, w.value), f"#{op.id}")
        log.complete.add(rev)
    for wr in history.watches:
        for r in wr.responses:
            for ev in r.events:
                value = ev.kv.value if ev.type == "put" else ""
                log.add(ev.kv.mod_revision, ev.kv.key, (ev.type, value), f"watch {wr.id}")
    log.finish()
    return log


def check(history: History, compact_revision: int = 0) -> CheckResult:
    """``compact_revision``: the highest revision any compaction of the run reached."""
    log = build_log(history)
    problems = list(log.problems)
    by_id = {w.id: w for w in history.watches}
    events = 0
    for w in history.watches:
        events += sum(len(r.events) for r in w.responses)
        problems.extend(_check_watch(w, log, compact_revision))
        if w.resumes is not None and w.resumes in by_id:
            last = _last_reported(by_id[w.resumes])
            s = w.request.start_revision
            if last and (s <= 0 or s > last + 1):
                problems.append(
                    f"watch {w.id}: resumes watch {w.resumes} at revision {s}, "
                    f"but that watch reported up to {last}"
                )
    if problems:
        return CheckResult("watch", "violation", problems[0], problems[:50])
    return CheckResult("watch", "ok", f"{len(history.watches)} watches, {events} events")


def _last_reported(w: WatchRecord) -> int:
    last = 0
    for r in w.responses:
        for ev in r.events:
            last = max(last, ev.kv.mod_revision)
        if r.is_progress_notify:
            last = max(last, r.revision)
    return last


def _check_watch(w: WatchRecord, log: EventLog, compact_revision: int) -> list[str]:
    req = w.request
    name = f"watch {w.id}"
    out: list[str] = []
    start = req.start_revision
    if start <= 0:
        created = next((r for r in w.responses if r.created), None)
        start = created.revision + 1 if created is not None else 0
    delivered: set[tuple[int, str]] = set()
    reported_missing: set[tuple[int, str]] = set()
    last_rev = 0
    header = 0
    floor = 0  # highest progress notification
    prev_fragment = False
    saw_events = False
    canceled = False
    for r in w.responses:
        if canceled:
            out.append(f"{name}: a response arrived after the watch was cancelled")
            break
        if r.created and saw_events:
            out.append(f"{name}: the created response came after events")
        if r.revision < header:
            out.append(f"{name}: header revision went back from {header} to {r.revision}")
        header = max(header, r.revision)
        if r.canceled:
            canceled = True
            continue
        saw_events = saw_events or bool(r.events)
        at_start = last_rev
        for ev in r.events:
            rev, key = ev.kv.mod_revision, ev.kv.key
            what = f"{name}: {ev.type} {key}@{rev}"
            if not _matches(req, key, ev.type):
                out.append(f"{what} does not match the watch's range/filters")
            if start and rev < start:
                out.append(f"{what} is below the start revision {start}")
            if rev < last_rev:
                out.append(f"{what} arrived after revision {last_rev} (not ordered)")
            elif rev == at_start and rev and not prev_fragment:
                out.append(f"{what}: revision {rev} split across responses (not atomic)")
            if (rev, key) in delivered:
                out.append(f"{what} delivered twice (not unique)")
            if rev <= floor:
                out.append(f"{what} arrived after a progress notification at {floor}")
            delivered.add((rev, key))
            last_rev = max(last_rev, rev)
            out.extend(_check_event(name, ev, req, log, compact_revision))
        if r.is_progress_notify and start:
            for rk in log.matching(req, start, r.revision):
                if rk not in delivered and rk not in reported_missing:
                    reported_missing.add(rk)
                    out.append(
                        f"{name}: progress notification at {r.revision} before the event "
                        f"on {rk[1]} at revision {rk[0]} was delivered (not bookmarkable)"
                    )
            floor = max(floor, r.revision)
        prev_fragment = r.fragment
    horizon = max(last_rev, floor)
    if start and horizon:
        for rk in log.matching(req, start, horizon):
            if rk not in delivered and rk not in reported_missing:
                out.append(
                    f"{name}: event on {rk[1]} at revision {rk[0]} missing between start "
                    f"{start} and {horizon} (gap; not reliable)"
                )
    return out


def _check_event(
    name: str, ev: Event, req: WatchRequest, log: EventLog, compact_revision: int
) -> list[str]:
    out: list[str] = []
    kv = ev.kv
    rev, key = kv.mod_revision, kv.key
    what = f"{name}: {ev.type} {key}@{rev}"
    if ev.type == "put" and kv.version is not None and kv.create_revision is not None:
        if (kv.version == 1) != (kv.create_revision == rev):
            out.append(f"{what}: version {kv.version} but create_revision {kv.create_revision}")
    if not req.prev_kv:
        return out
    prev = log.previous(key, rev)
    compacted = rev - 1 < compact_revision
    pk = ev.prev_kv
    if pk is not None:
        if pk.key != key or pk.mod_revision >= rev:
            out.append(
                f"{what}: prev_kv {pk.key}@{pk.mod_revision} is not an earlier version of the key"
            )
            return out
        if ev.type == "put" and kv.version == 1:
            out.append(f"{what}: a creation (version 1) carries prev_kv")
        known = log.events.get(pk.mod_revision, {}).get(key)
        if known is not None and known != ("put", pk.value):
            out.append(
                f"{what}: prev_kv {pk.value!r}@{pk.mod_revision} but at that revision the "
                f"key got {known[0]} {known[1]!r}"
            )
        if prev is not None and prev[0] > pk.mod_revision:
            out.append(
                f"{what}: prev_kv {pk.value!r}@{pk.mod_revision} is stale: the key got "
                f"{prev[1][0]} {prev[1][1]!r} at revision {prev[0]}"
            )
        return out
    if compacted:
        return out
    if ev.type == "put" and kv.version is not None and kv.version > 1:
        out.append(f"{what}: version {kv.version} (a modification) without prev_kv")
        return out
    if prev is not None and prev[1][0] == "put":
        between = range(prev[0] + 1, rev)
        if all(r in log.complete for r in between):
            out.append(f"{what}: prev_kv missing, but the key was {prev[1][1]!r}@{prev[0]}")
    return out
