"""Linearizability of a KV history against etcd's semantics, in the style of Porcupine.

Search
------
Wing & Gong's search with Lowe's memoisation, as Porcupine does it: a node is (set of operations
already linearized, as a bitmask; model state). From a node, the candidates are the operations not
yet linearized that were invoked no later than the earliest return among the operations not yet
linearized (anything invoked later must come after that one). Every (mask, state) pair is explored
at most once. The model is non-deterministic (a step may yield several states), which covers
requests whose outcome is unknown: their return time is "never", so they can be linearized at any
point after their invoke, and their step yields both "had no effect" and "took effect". Reads with
an unknown outcome, serializable reads and definite errors constrain nothing and are dropped.

The search is bounded by a deadline and a number of explored nodes; when a bound is hit the
verdict is ``unknown``, never a pass.

Model (etcd KV semantics)
-------------------------
State: the store revision, every key's (value, mod_revision, create_revision, version, lease),
and the leases revoked so far. Initial revision 1 (``History.initial_revision``), empty store.
- put: revision+1; key gets mod=create(if new)=new revision, version+1 (1 if new), the lease.
  A put with a revoked lease cannot succeed.
- delete: removes the keys present; revision+1 iff it removed one; ``deleted`` must match.
- txn: compares are evaluated as etcd does (value compare on a missing key is false; other
  targets of a missing key are 0); the branch must match ``succeeded``; its ops apply in order
  under one revision (+1 iff any op wrote); nested range results are checked.
- range: must return exactly the keys present in the range with matching value, mod_revision,
  and create_revision / version / lease when recorded; the header revision must equal the store
  revision.
- lease_revoke: deletes the lease's keys (revision+1 iff any); ``lease_expired`` (a client was
  told the lease is gone) requires a revoke of that lease to have been linearized before it,
  when the history records one (expiry is recorded as an unknown-outcome revoke).
- Every write's response revision must be exactly the new store revision.

Partitioning (what is checked, and why it is sound)
---------------------------------------------------
The global revision couples every key, so plain per-key partitioning (Porcupine's) would be
unsound for responses that carry revisions. We check three necessary conditions instead; each is
implied by the existence of a linearization of the whole history under the model above, so any
violation any of them reports is a real violation:

1. **revision order** (all operations, one partition): the model projected on the revision
   counter alone. State = the exact store revision. A write that certainly wrote (put; delete with
   deleted>0; txn whose taken branch puts) must report exactly revision+1; a read (and a no-op
   write) must report exactly the current revision; a write that may or may not have written
   (unknown outcome, revoke, delete without a count) may do either. Lease rules are left to
   the per-key partitions (they hold every revoke of a lease ever put on their key): tracking
   revoked leases here would make every unknown-outcome lease expiry a distinct candidate (the
   revoked set is part of the state), and a few dozen of them exhaust the search; without it
   they are interchangeable (see ``search``'s ``symmetry``). This catches revisions going
   backwards, duplicated or skipped revisions, and reads whose header revision is out of real-time
   order, for all keys together. The state is one integer, so memoisation keeps it cheap.
2. **per key** (one partition per key): the model projected on one key. Every operation touching
   key k (ranges covering k, txns naming k, revokes of leases ever put on k) is projected on k.
   The store revision is not known inside a partition, so the state holds a lower bound ``g`` of
   it: writes must report a revision > g, reads a header revision >= g (then g := the reported
   revision); a write with unknown outcome raises g by one and leaves the key's mod_revision
   unknown (> the old g) until a read reports it; an op that may have written only other keys
   (a revoke of a lease the key does not hold) leaves g alone, which keeps it a lower bound.
   Compares on other keys are treated as unknown
   (both branches allowed unless ``succeeded`` is known). This catches stale reads, lost or
   reordered writes, values nobody wrote, wrong mod_revision/version/create_revision, and reads
   whose header revision is older than a write they must have seen.
   Projection is sound: projecting a valid global linearization on k gives a sequence these rules
   accept, because g never exceeds the true revision at any point.
3. **full model** (all operations, one partition), only when the history is small enough
   (``full_max_ops``) and the budget allows: exact, including cross-key facts (multi-key txn
   atomicity, range counts) that 1 and 2 cannot see. If it cannot finish, its verdict is dropped
   (reported as skipped), not turned into a pass or a failure.

Not checked here: serializable reads (they may be stale by design), historical reads, compaction.

Cost
----
Candidates are tried in the order the responses' revisions suggest; unknown-outcome ops are
optional (placed only where they take effect, tried last) and interchangeable ones are tried
once; states that differ only in revoked leases nothing left refers to are merged (see
``search``); an unknown-outcome revoke of a lease no key holds is placed only right before an
op that observes the lease (a put with it, its ``lease_expired``), and closed once none is
left (``Deferral``); ops inert in a partition (``lease_expired`` in the revision order) are left out
of it (see ``check``), and ok ops with no revision are tried before the unknown ones. So
passing histories of thousands of ops with ~8 concurrent clients and dozens of lease expiries
(recorded as unknown-outcome revokes) check the partitions in well under a second. The full
model is the expensive part: at a revision no response reports it must guess which unknown op
made it, and a wrong guess (say, a lease expiry that really came later, after
a restart extended the lease) may only show much later; it is dropped when out of budget.
Proving a violation needs the whole space explored, and operations with unknown outcome stay
candidates until the end, so
histories where a third or more of the writes timed out, with wide concurrency, can exhaust the
budget (verdict ``unknown``). etcd avoids this by patching the history with the requests found
in the members' WALs; that belongs to the harness.

Violations
----------
A failing partition is narrowed to its **minimal violating window**: the partition's operations
are cut at quiescent points (where every earlier operation returned before any later one was
invoked, so every linearization of the whole must linearize the prefix first). The first prefix
that cannot be linearized is found by bisection; the window is the operations between the
previous cut and that prefix's end, shown with the model states possible just before it.
Operations with unknown outcome never return; cuts may still fall after them, with the window
carrying them (see ``minimal_window``), else windows start before the first of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .history import (
    KV,
    OK,
    Compare,
    Delete,
    History,
    LeaseExpired,
    LeaseGrant,
    LeaseRevoke,
    Operation,
    Put,
    Range,
    Response,
    Txn,
    TxnOp,
    in_range,
    request_keys,
)
from .report import CheckResult, merge

INF = float("inf")

# A key's record: (value, mod, lb, create, version, lease).
# mod > 0: known; mod == 0: unknown, > lb; mod == -1: written by the op being applied.
# create > 0: known; 0: unknown; -1: equal to mod (created by the write that set mod).
Rec = tuple[str, int, int, int, int, int]
State = tuple[int, tuple[tuple[str, Rec], ...], frozenset[int]]


# ================================================================ search engine


@dataclass
class Budget:
    seconds: float = 10.0
    max_states: int = 2_000_000
    started: float = field(default_factory=time.monotonic)
    explored: int = 0

    def exhausted(self) -> bool:
        return self.explored >= self.max_states or time.monotonic() - self.started > self.seconds


@dataclass
class SearchResult:
    status: str  # ok / violation / unknown
    finals: set[Any] = field(default_factory=set)
    deepest: int = 0  # most operations linearized on any path
    deepest_mask: int = 0


def search(
    ops: Sequence[Operation],
    init_states: Iterable[Any],
    step: Callable[[Any, Operation], list[Any]],
    budget: Budget,
    collect: bool = False,
    symmetry: Callable[[Operation], Hashable | None] | None = None,
    canon: Callable[[int, Any], tuple[int, Any]] | None = None,
    defer: Deferral | None = None,
) -> SearchResult:
    """Porcupine-style search. ``ops`` must be sorted by invoke time. With ``collect`` every
    final state is gathered instead of stopping at the first full linearization.

    Candidates are tried in the order of :func:`_priority` (by reported revision): only the
    order of exploration changes, never the set of nodes that may be explored, so the verdict
    is the same; without it a wide window of concurrent writes backtracks a lot.

    ``symmetry`` gives operations with unknown outcome a class when every op of the class has
    the same effect on the model state; of the pending candidates of one class only the
    earliest invoked is tried. Sound and complete: both are pending candidates that never
    return, so any linearization using the later one here and the earlier one later stays
    valid with the two swapped, and yields the same states.

    ``canon(mask, state)`` may map a node to an equivalent one (same successors for every
    sequence of the operations left), so that more nodes are merged: a state with less in it,
    and a mask with more optional ops in it (ops that can no longer take effect, closed).

    Unless ``collect``: operations with unknown outcome are *optional*. They are placed only
    where they take effect (a successor equal to the current state -- "had no effect" -- is
    dropped), and the search succeeds once every other operation is placed: an unknown op
    that never took effect is one that is never placed. Same verdict as placing it "with no
    effect" somewhere, but the search no longer commits early to "no effect" (which closes
    the op for good): a lease expiry tried before the revision it really happened at would
    otherwise be settled as "no effect" there, and the contradiction found hundreds of ops
    later would backtrack over all of them. With ``collect`` every op is placed (the final
    states must be exact) and ``canon`` is not applied.

    ``defer`` (unless ``collect``): optional ops whose effect, from the current state, only
    some later ops can observe (see :class:`Deferral`) are not tried on their own there, only
    right before one of those observers. Complete: in any linearization such an op can be moved
    later past every op that does not observe it (neither depends on the other, and a
    never-returning op stays a candidate), up to its first observer or out of the sequence."""
    n = len(ops)
    prio = _priorities(ops)
    sym = [symmetry(op) if symmetry is not None else None for op in ops]
    inv = [op.invoke for op in ops]
    ret: list[float] = [INF if op.status != OK or op.ret is None else op.ret for op in ops]
    full = (1 << n) - 1
    lazy = not collect
    if collect:
        canon = None
    optional = [i for i, op in enumerate(ops) if op.status != OK] if lazy else []
    optmask = sum(1 << i for i in optional)
    need = full & ~optmask  # what a linearization must hold
    if collect:
        defer = None
    tags: list[Hashable | None] = [None] * n
    observers: dict[Hashable, int] = {}
    if defer is not None:
        tags = [defer.tag(op) if (optmask >> i) & 1 else None for i, op in enumerate(ops)]
        for i, op in enumerate(ops):
            for t in defer.observes(op):
                observers[t] = observers.get(t, 0) | (1 << i)
    stack: list[tuple[int, Any]] = [(0, s) for s in init_states]
    seen = set(stack)
    result = SearchResult("violation")
    tick = 0
    while stack:
        mask, st = stack.pop()
        if mask & need == need:
            if not collect:
                return SearchResult("ok", deepest=n)
            result.finals.add(st)
            result.status = "ok"
            continue
        tick += 1
        if tick & 255 == 0:
            budget.explored += 256
            if budget.exhausted():
                return SearchResult(
                    "unknown", deepest=result.deepest, deepest_mask=result.deepest_mask
                )
        depth = mask.bit_count()
        if depth > result.deepest:
            result.deepest = depth
            result.deepest_mask = mask
        skip = mask | optmask  # optional ops are scanned apart (they may stay pending forever)
        lo = ((skip + 1) & ~skip).bit_length() - 1
        minret = INF
        cands: list[int] = []
        i = lo
        while i < n and inv[i] <= minret:
            if not (skip >> i) & 1:
                cands.append(i)
                if ret[i] < minret:
                    minret = ret[i]
            i += 1
        for i in optional:
            if inv[i] > minret:
                break
            if not (mask >> i) & 1:
                cands.append(i)
        cands = [c for c in cands if inv[c] <= minret]
        if len(cands) > 1:
            cands.sort()  # index order = invoke order (for the symmetry classes)
            classes: set[Hashable] = set()
            kept = []
            for c in cands:
                k = sym[c]
                if k is not None:
                    if k in classes:
                        continue
                    classes.add(k)
                kept.append(c)
            cands = kept
        held: dict[Hashable, int] = {}  # deferred tag -> the candidate deferred for it
        if defer is not None:
            kept = []
            for c in cands:
                t = tags[c]
                if t is not None and not defer.effective(st, t):
                    held.setdefault(t, c)
                else:
                    kept.append(c)
            cands = kept
        if len(cands) > 1:
            cands.sort(key=prio.__getitem__)
        for c in reversed(cands):
            nmask = mask | (1 << c)
            lazy_op = lazy and ret[c] == INF and (optmask >> c) & 1
            for nst in step(st, ops[c]):
                if lazy_op and nst == st:
                    continue
                node = (nmask, nst) if canon is None else canon(nmask, nst)
                if node not in seen:
                    seen.add(node)
                    stack.append(node)
            if held and defer is not None:
                # the deferred ops this candidate observes, placed right before it
                for t in defer.observes(ops[c]):
                    d = held.get(t)
                    if d is None:
                        continue
                    for mid in step(st, ops[d]):
                        if mid == st:
                            continue
                        for nst in step(mid, ops[c]):
                            if lazy_op and nst == mid:
                                continue
                            dmask = nmask | (1 << d)
                            node = (dmask, nst) if canon is None else canon(dmask, nst)
                            if node not in seen:
                                seen.add(node)
                                stack.append(node)
    budget.explored += tick & 255
    return result


class Deferral:
    """For :func:`search`'s ``defer``. ``tag(op)``: for an optional op, a tag when its effect
    may be one that only the ops ``observes`` lists the tag for can see; ``effective(state,
    tag)``: whether, from ``state``, it may have any other effect (then it is tried as usual).
    ``observes(op)`` must list the tag for every op whose step could tell the difference."""

    def tag(self, op: Operation) -> Hashable | None:
        return None

    def effective(self, state: Any, tag: Hashable) -> bool:
        return True

    def observes(self, op: Operation) -> Iterable[Hashable]:
        return ()


def _priorities(ops: Sequence[Operation]) -> list[tuple[float, int, int]]:
    """Per op, the order to try candidates in (see :func:`_priority`). Operations with unknown
    outcome come last, in invoke order: :func:`search` places them only where they take
    effect and never has to place them, so they get tried where nothing else fits -- at a
    revision no response reports, before a read that sees their effect -- and a wrong guess is
    undone right there. (Tried first, each would be a guess at every step.)"""
    return [_priority(op) for op in ops]


def _priority(op: Operation) -> tuple[float, int, int]:
    """Try first what the responses say happened first: a write producing revision R, then
    reads at R; operations with unknown outcome last (they are optional). An op with outcome
    ok but no revision (``lease_expired``) comes before those: it must be placed, and until it
    is, nothing invoked after its return is a candidate; behind them, each pending unknown op
    would be placed (and then undone) before it, at every point where it is a candidate.
    Among unknown ops, lease revokes (expiries) first: what such an observation waits for."""
    resp = op.response
    if op.status != OK:
        return (INF, 2 if isinstance(op.request, LeaseRevoke) else 3, op.invoke)
    if resp is None or resp.revision is None:
        return (INF, 1, op.invoke)
    req = op.request
    if isinstance(req, Put):
        return (resp.revision, 0, op.invoke)
    if isinstance(req, Txn) and resp.succeeded is not None:
        if _branch_writes(req, resp.succeeded):
            return (resp.revision, 0, op.invoke)
    if isinstance(req, Delete) and resp.deleted:
        return (resp.revision, 0, op.invoke)
    # reads, no-op writes, and writes that may not have written (revoke, uncounted delete):
    # after any write that claims the same revision
    return (resp.revision, 1, op.invoke)


def _branch_writes(req: Txn, succeeded: bool) -> bool:
    return any(not isinstance(o, Range) for o in (req.success if succeeded else req.failure))


# ================================================================ the KV model


class _Ctx:
    """Mutable working copy of a state while one operation is applied."""

    __slots__ = ("g", "recs", "revoked", "wrote")

    def __init__(self, g: int, recs: dict[str, Rec], revoked: frozenset[int]):
        self.g = g
        self.recs = recs
        self.revoked = revoked
        self.wrote: bool | None = False

    def copy(self) -> _Ctx:
        c = _Ctx(self.g, dict(self.recs), self.revoked)
        c.wrote = self.wrote
        return c

    def freeze(self) -> State:
        return (self.g, tuple(sorted(self.recs.items())), self.revoked)


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    if a is False and b is False:
        return False
    return None


class KVModel:
    """The model of the module docstring, projected on ``scope`` (None: every key).

    ``exact``: the partition holds every write, so the store revision is known exactly;
    otherwise it is a lower bound. ``known_revokes``: leases some operation revokes (for
    ``lease_expired``). ``leases=False`` drops the lease rules (a put with a revoked lease
    fails; ``lease_expired`` needs a revoke first): the revision-order partition uses it, the
    per-key partitions and the full model keep them.
    """

    def __init__(
        self,
        scope: frozenset[str] | None,
        exact: bool,
        known_revokes: frozenset[int],
        leases: bool = True,
    ):
        self.scope = scope
        self.exact = exact
        self.known_revokes = known_revokes
        self.leases = leases

    def init(self, revision: int) -> State:
        return (revision, (), frozenset())

    def symmetry(self, op: Operation) -> Hashable | None:
        """Class of interchangeable unknown-outcome ops (see :func:`search`): those that can
        only raise the revision by one or leave it, touching no key or lease of this model."""
        if op.status == OK or self.scope is None:
            return None
        req = op.request
        if isinstance(req, LeaseRevoke) and not self.leases and not self.scope:
            return "w"  # no key in scope, revoked leases not tracked: at most +1 revision
        if not isinstance(req, (Put, Delete, Txn)) or (self.leases and _leases_of(req)):
            return None
        subs = (*req.success, *req.failure) if isinstance(req, Txn) else (req,)
        for o in subs:
            if isinstance(o, Range):
                continue
            if isinstance(o, Delete) and o.end is not None:
                if self.scope:
                    return None  # may delete an in-scope key
            elif self.inscope(o.key):
                return None
        if isinstance(req, Txn) and any(self.inscope(c.key) for c in req.compares):
            return None  # whether it writes at all depends on in-scope state
        return "w"

    def canonicalizer(
        self, ops: Sequence[Operation]
    ) -> Callable[[int, State], tuple[int, State]] | None:
        """For :func:`search`'s ``canon``: forget that a lease is revoked once no operation left
        to linearize refers to it (a put with it, or an observation of its expiry); revokes do
        not depend on it. Without this every lease expiry of unknown outcome, linearized or
        not, "took effect" or not, splits the state space in two.

        A put of unknown outcome with a revoked lease can no longer take effect (the lease
        stays revoked while anything refers to it), so it is closed (added to the mask) and
        does not keep the lease referred to: else a put that timed out with a lease that then
        expired kept that lease in every state to the end of the history."""
        if not self.leases:
            return None
        refs: dict[int, int] = {}
        dead: dict[int, int] = {}  # lease -> unknown-outcome puts with it
        revokes: dict[int, int] = {}  # lease -> unknown-outcome revokes of it
        for i, op in enumerate(ops):
            req = op.request
            if isinstance(req, LeaseRevoke) and op.status != OK:
                revokes[req.lease] = revokes.get(req.lease, 0) | (1 << i)
            leases = {req.lease} if isinstance(req, LeaseExpired) else _leases_of(req)
            for lease in leases:
                if op.status != OK and isinstance(req, Put):
                    dead[lease] = dead.get(lease, 0) | (1 << i)
                else:
                    refs[lease] = refs.get(lease, 0) | (1 << i)

        users = {x: refs.get(x, 0) | dead.get(x, 0) for x in revokes}

        def canon(mask: int, state: State) -> tuple[int, State]:
            revoked = state[2]
            for x in revoked:
                mask |= dead.get(x, 0)
            # An unknown revoke of a lease no key holds, with nothing left that refers to the
            # lease (that could put it on a key, or observe its revocation), can have no
            # effect any more: closed, so the nodes that did or did not place it merge.
            if revokes:
                held = {r[5] for _, r in state[1]}
                for x, bits in revokes.items():
                    if bits & ~mask and x not in held and not users.get(x, 0) & ~mask:
                        mask |= bits
            if not revoked:
                return mask, state
            keep = frozenset(x for x in revoked if refs.get(x, 0) & ~mask)
            if len(keep) == len(revoked):
                return mask, state
            return mask, (state[0], state[1], keep)

        return canon

    def deferral(self) -> Deferral | None:
        """For :func:`search`'s ``defer``: an unknown-outcome revoke of a lease no key holds
        only marks the lease revoked (no key deleted; in a per-key partition g stays, in the
        full model the revision stays), which only puts with the lease and ``lease_expired``
        of it can observe. So it is placed only right before one of those (every unknown
        lease expiry, tried at every point, multiplied the states by two)."""
        if not self.leases:
            return None
        return _LeaseDeferral()

    def inert(self, op: Operation) -> bool:
        """True when ``op`` (outcome ok) neither changes nor constrains any state of this model:
        a ``lease_expired`` when lease rules are off, or for a lease nobody revokes. Such an op
        can be left out of the search (see :func:`check`)."""
        req = op.request
        if op.status != OK or not isinstance(req, LeaseExpired):
            return False
        return not self.leases or req.lease not in self.known_revokes

    def inscope(self, key: str) -> bool:
        return self.scope is None or key in self.scope

    # -------------------------------------------------------- step

    def step(self, state: State, op: Operation) -> list[State]:
        ctx = _Ctx(state[0], dict(state[1]), state[2])
        if op.status == OK:
            resp = op.response or Response()
            return self._finish(
                state[0], self._apply(ctx, op.request, resp, resp.revision), resp.revision
            )
        # unknown outcome: no effect, or took effect with no response to check
        out = [state]
        out.extend(self._finish(state[0], self._apply(ctx, op.request, None, None), None))
        return out

    def _finish(self, g0: int, ctxs: list[_Ctx], rev: int | None) -> list[State]:
        out: list[State] = []
        for ctx in ctxs:
            if ctx.wrote is not None:
                options = [ctx.wrote]
            elif self.exact:
                options = [True, False]
            else:
                # Unknown whether it wrote, and if it did, only out of scope: a projection
                # only needs g to stay a lower bound, so leave it (a weaker constraint, and
                # one state instead of two for every lease revoke of some other key).
                options = [False]
            for wrote in options:
                c = ctx.copy() if len(options) > 1 else ctx
                if self._settle(c, g0, wrote, rev):
                    out.append(c.freeze())
        return out

    def _settle(self, c: _Ctx, g0: int, wrote: bool, rev: int | None) -> bool:
        """Apply the revision rules for the op just applied (g0: revision before it)."""
        if wrote:
            if self.exact:
                new = g0 + 1
                if rev is not None and rev != new:
                    return False
            elif rev is not None:
                if rev <= g0 or rev < c.g:
                    return False
                new = rev
            else:
                new = 0  # unknown
            for k, r in c.recs.items():
                if r[1] == -1:
                    if new:
                        c.recs[k] = (r[0], new, 0, new if r[3] == -1 else r[3], r[4], r[5])
                    else:
                        c.recs[k] = (r[0], 0, g0, r[3], r[4], r[5])
            c.g = new if new else g0 + 1
            return True
        if rev is not None:
            if self.exact and rev != g0:
                return False
            if rev < c.g:
                return False
            c.g = rev
        return True

    def _apply(self, ctx: _Ctx, req: Any, resp: Response | None, header: int | None) -> list[_Ctx]:
        if isinstance(req, Range):
            return [ctx] if self._read(ctx, req, resp, header) else []
        if isinstance(req, Put):
            return self._put(ctx, req)
        if isinstance(req, Delete):
            return self._delete(ctx, req, resp)
        if isinstance(req, Txn):
            return self._txn(ctx, req, resp, header)
        if isinstance(req, LeaseRevoke):
            return self._revoke(ctx, req)
        if isinstance(req, LeaseExpired):
            if not self.leases:
                return [ctx]
            if req.lease in self.known_revokes and req.lease not in ctx.revoked:
                return []
            return [ctx]
        return [ctx]  # lease grant: no KV effect

    def _read(self, ctx: _Ctx, req: Range, resp: Response | None, header: int | None) -> bool:
        if resp is None or resp.kvs is None:
            return True
        expected = {k: r for k, r in ctx.recs.items() if in_range(k, req.key, req.end)}
        got = [kv for kv in resp.kvs if self.inscope(kv.key)]
        if len(got) != len(expected) or any(kv.key not in expected for kv in got):
            return False
        if self.scope is None and resp.count is not None and resp.count != len(expected):
            return False
        return all(self._match(ctx, kv, expected[kv.key], header) for kv in got)

    def _match(self, ctx: _Ctx, kv: KV, rec: Rec, header: int | None) -> bool:
        value, mod, lb, create, version, lease = rec
        if kv.value != value:
            return False
        if kv.version is not None and kv.version != version:
            return False
        if kv.lease is not None and kv.lease != lease:
            return False
        m = kv.mod_revision
        if mod > 0:
            if m != mod:
                return False
        elif mod == 0:
            if m <= lb or (header is not None and m > header):
                return False
            mod = m
            if create == -1:
                create = m
            ctx.recs[kv.key] = (value, mod, 0, create, version, lease)
        elif header is not None and m != header:  # written earlier in this same txn
            return False
        if kv.create_revision is not None:
            if create > 0 and kv.create_revision != create:
                return False
            if create == -1 and mod > 0 and kv.create_revision != mod:
                return False
        return True

    def _put(self, ctx: _Ctx, req: Put) -> list[_Ctx]:
        if self.leases and req.lease and req.lease in ctx.revoked:
            return []
        if self.inscope(req.key):
            prev = ctx.recs.get(req.key)
            if prev is None:
                ctx.recs[req.key] = (req.value, -1, 0, -1, 1, req.lease)
            else:
                create = prev[3]
                if create == -1:
                    create = prev[1] if prev[1] > 0 else 0
                ctx.recs[req.key] = (req.value, -1, 0, create, prev[4] + 1, req.lease)
        ctx.wrote = True
        return [ctx]

    def _delete(self, ctx: _Ctx, req: Delete, resp: Response | None) -> list[_Ctx]:
        gone = [k for k in ctx.recs if in_range(k, req.key, req.end)]
        for k in gone:
            del ctx.recs[k]
        d = resp.deleted if resp is not None else None
        fully_seen = self.scope is None or (req.end is None and req.key in self.scope)
        if d is not None:
            if d < len(gone) or (fully_seen and d != len(gone)):
                return []
            wrote: bool | None = d > 0
        elif gone:
            wrote = True
        else:
            wrote = False if fully_seen else None
        ctx.wrote = _or(ctx.wrote, wrote)
        return [ctx]

    def _compare(self, ctx: _Ctx, c: Compare) -> bool | None:
        if not self.inscope(c.key):
            return None
        rec = ctx.recs.get(c.key)
        have: str | int
        if rec is None:
            if c.target == "value":
                return False
            have = 0
        elif c.target == "value":
            have = rec[0]
        elif c.target == "mod":
            if rec[1] <= 0:
                return None
            have = rec[1]
        elif c.target == "create":
            create = rec[3] if rec[3] != -1 else rec[1]
            if create <= 0:
                return None
            have = create
        elif c.target == "version":
            have = rec[4]
        else:
            have = rec[5]
        want = c.operand
        if isinstance(have, int) and not isinstance(want, int):
            want = int(want)
        if c.op == "=":
            return have == want
        if c.op == "!=":
            return have != want
        if c.op == "<":
            return have < want  # type: ignore[operator]
        return have > want  # type: ignore[operator]

    def _txn(self, ctx: _Ctx, req: Txn, resp: Response | None, header: int | None) -> list[_Ctx]:
        truth: bool | None = True
        for c in req.compares:
            t = self._compare(ctx, c)
            if t is False:
                truth = False
                break
            if t is None:
                truth = None
        succeeded = resp.succeeded if resp is not None else None
        if succeeded is None:
            branches = [True, False] if truth is None else [truth]
        else:
            if truth is not None and truth != succeeded:
                return []
            branches = [succeeded]
        out: list[_Ctx] = []
        for b in branches:
            ops = req.success if b else req.failure
            subs = resp.responses if resp is not None else None
            if subs is not None and len(subs) != len(ops):
                subs = None
            cur = [ctx.copy() if len(branches) > 1 else ctx]
            for i, sub in enumerate(ops):
                sresp = subs[i] if subs is not None else None
                nxt: list[_Ctx] = []
                for cc in cur:
                    nxt.extend(self._apply_sub(cc, sub, sresp, header))
                cur = nxt
            out.extend(cur)
        return out

    def _apply_sub(
        self, ctx: _Ctx, sub: TxnOp, resp: Response | None, header: int | None
    ) -> list[_Ctx]:
        if isinstance(sub, Range):
            return [ctx] if self._read(ctx, sub, resp, header) else []
        if isinstance(sub, Put):
            return self._put(ctx, sub)
        return self._delete(ctx, sub, resp)

    def _revoke(self, ctx: _Ctx, req: LeaseRevoke) -> list[_Ctx]:
        gone = [k for k, r in ctx.recs.items() if r[5] == req.lease]
        for k in gone:
            del ctx.recs[k]
        if self.leases:
            ctx.revoked = ctx.revoked | {req.lease}
        if gone:
            ctx.wrote = True
        else:
            ctx.wrote = _or(ctx.wrote, False if self.scope is None else None)
        return [ctx]


class _LeaseDeferral(Deferral):
    def tag(self, op: Operation) -> Hashable | None:
        req = op.request
        if op.status != OK and isinstance(req, LeaseRevoke):
            return req.lease
        return None

    def effective(self, state: Any, tag: Hashable) -> bool:
        return any(r[5] == tag for _, r in state[1])

    def observes(self, op: Operation) -> Iterable[Hashable]:
        req = op.request
        if isinstance(req, LeaseExpired):
            return (req.lease,)
        return _leases_of(req)


# ================================================================ driver


def _relevant(op: Operation) -> bool:
    if op.status not in (OK, "unknown"):
        return False  # definite error: no effect
    req = op.request
    if isinstance(req, LeaseGrant):
        return False
    if isinstance(req, Range):
        return op.status == OK and not req.serializable
    if isinstance(req, LeaseExpired):
        return op.status == OK
    return True


def _write_keys(req: Any) -> set[str]:
    if isinstance(req, Put):
        return {req.key}
    if isinstance(req, Txn):
        out: set[str] = set()
        for o in (*req.success, *req.failure):
            out |= _write_keys(o)
        return out
    return set()


def _leases_of(req: Any) -> set[int]:
    if isinstance(req, Put):
        return {req.lease} if req.lease else set()
    if isinstance(req, Txn):
        out: set[int] = set()
        for o in (*req.success, *req.failure):
            out |= _leases_of(o)
        return out
    return set()


def _ranges(req: Any) -> list[tuple[str, str | None]]:
    if isinstance(req, (Range, Delete)):
        return [(req.key, req.end)]
    if isinstance(req, Txn):
        return [
            (o.key, o.end) for o in (*req.success, *req.failure) if isinstance(o, (Range, Delete))
        ]
    return []


def _response_keys(resp: Response | None) -> set[str]:
    if resp is None:
        return set()
    out = {kv.key for kv in resp.kvs or ()}
    for sub in resp.responses or ():
        out |= _response_keys(sub)
    return out


def partitions(ops: Sequence[Operation]) -> dict[str, list[Operation]]:
    """Per-key projections: every op that touches each key (see module docstring)."""
    keys: set[str] = set()
    key_leases: dict[str, set[int]] = {}
    for op in ops:
        keys |= request_keys(op.request) | _response_keys(op.response)
        for k in _write_keys(op.request):
            key_leases.setdefault(k, set()).update(_leases_of(op.request))
    parts: dict[str, list[Operation]] = {k: [] for k in sorted(keys)}
    for op in ops:
        req = op.request
        if isinstance(req, (LeaseRevoke, LeaseExpired)):
            for k, leases in key_leases.items():
                if req.lease in leases:
                    parts[k].append(op)
            continue
        touched = request_keys(req) | _response_keys(op.response)
        for a, b in _ranges(req):
            if b is not None:
                touched.update(k for k in keys if in_range(k, a, b))
        for k in sorted(touched):
            parts[k].append(op)
    return parts


@dataclass
class _Part:
    name: str
    ops: list[Operation]
    model: KVModel


def check(
    history: History,
    *,
    seconds: float = 10.0,
    max_states: int = 2_000_000,
    full_max_ops: int = 5000,
) -> CheckResult:
    """Check the KV operations of ``history``; see the module docstring for exactly what.

    ``seconds`` bounds the whole check: the partitions share 60% of it (each gets a fair share
    of what is left, so one hard key cannot starve the others), the full model the rest. The
    full model is exact, so when it passes the history is linearizable even if a partition ran
    out of budget; when it runs out of budget the partitions' verdict stands."""
    started = time.monotonic()
    ops = sorted((op for op in history.operations if _relevant(op)), key=lambda o: (o.invoke, o.id))
    known_revokes = frozenset(op.request.lease for op in ops if isinstance(op.request, LeaseRevoke))
    parts = [_Part("revision order", ops, KVModel(frozenset(), True, known_revokes, leases=False))]
    for key, pops in partitions(ops).items():
        parts.append(_Part(f"key {key!r}", pops, KVModel(frozenset({key}), False, known_revokes)))
    for part in parts:
        # Inert ops (no effect, no constraint in this model) can always be linearized: between
        # the last op that returned before their invoke and the first invoked after their
        # return (real-time order puts the former before the latter), so leaving them out
        # changes no verdict. Kept in, each one (a lease_expired, in the revision-order
        # partition) bounds the candidates until it is placed: behind the pending
        # unknown-outcome ops in the order of trial, it made chains of them be placed and
        # undone before it, each time (a real history's revision order ran out of budget).
        part.ops = [op for op in part.ops if not part.model.inert(op)]
    phase = 0.6 * seconds
    results: list[CheckResult] = []
    for i, part in enumerate(parts):
        left = max(0.05, phase - (time.monotonic() - started))
        share = min(left, 2 * left / (len(parts) - i))
        results.append(
            _check_part(part, history.initial_revision, Budget(share, max_states), seconds)
        )
        if results[-1].status == "violation":
            break
    verdict = merge("linearizability", results)
    if verdict.status == "violation":
        return verdict
    if len(ops) > full_max_ops:
        note = f"full cross-key model skipped ({len(ops)} ops > {full_max_ops})"
    else:
        left = max(0.5, seconds - (time.monotonic() - started))
        full_model = KVModel(None, True, known_revokes)
        full = _check_part(
            _Part("full model", [op for op in ops if not full_model.inert(op)], full_model),
            history.initial_revision,
            Budget(left, max_states),
            seconds,
        )
        if full.status == "ok":
            return CheckResult("linearizability", "ok", "exact full model passed")
        if full.status == "violation":
            return merge("linearizability", results + [full])
        note = "full cross-key model ran out of budget"
    verdict.summary = "; ".join(x for x in (verdict.summary, note) if x)
    return verdict


def _check_part(
    part: _Part, initial_revision: int, budget: Budget, window_seconds: float
) -> CheckResult:
    init = [part.model.init(initial_revision)]
    res = search(
        part.ops,
        init,
        part.model.step,
        budget,
        symmetry=part.model.symmetry,
        canon=part.model.canonicalizer(part.ops),
        defer=part.model.deferral(),
    )
    if res.status == "ok":
        return CheckResult(part.name, "ok", "")
    if res.status == "unknown":
        return CheckResult(part.name, "unknown", f"search budget exhausted ({len(part.ops)} ops)")
    details = minimal_window(part, initial_revision, Budget(window_seconds, budget.max_states))
    stuck = [
        op
        for i, op in enumerate(part.ops)
        if op.status == OK and not (res.deepest_mask >> i) & 1 and op.ret is not None
    ]
    if stuck:
        first = min(stuck, key=lambda o: o.ret or 0)
        details.insert(
            0,
            f"the longest partial linearization holds {res.deepest} of {len(part.ops)} ops; "
            f"the earliest-returning op it could not place: {first.describe()}",
        )
    return CheckResult(part.name, "violation", "history is not linearizable", details)


def _cuts(ops: Sequence[Operation], through_unknown: bool) -> list[int]:
    """Indices c such that every op before c returned before op c was invoked. With
    ``through_unknown``, ops with unknown outcome (which never return) are ignored."""
    cuts = []
    last_ret: float = -INF
    for i, op in enumerate(ops):
        if i > 0 and last_ret < op.invoke:
            cuts.append(i)
        if op.status == OK and op.ret is not None:
            last_ret = max(last_ret, op.ret)
        elif not through_unknown:
            last_ret = INF
    cuts.append(len(ops))
    return cuts


def minimal_window(part: _Part, initial_revision: int, budget: Budget) -> list[str]:
    """Narrow a failing partition to a window (see the module docstring).

    First with cuts that ops of unknown outcome do not block: a prefix up to such a cut is
    still implied by any linearization of the whole (an unknown op placed after the cut becomes
    "no effect" in the prefix), so bisection stays sound; the window then carries the earlier
    unknown ops, which may take effect inside it. That over-approximates, so the window is
    only reported if it fails on its own; otherwise cuts after unknown ops are not used."""
    for through in (True, False):
        found = _window(part, initial_revision, budget, through)
        if found is None:
            continue
        if isinstance(found, str):
            return [found]
        return found
    return ["(no failing window found within the budget)"]


def _window(
    part: _Part, initial_revision: int, budget: Budget, through_unknown: bool
) -> list[str] | str | None:
    ops = part.ops
    step, sym = part.model.step, part.model.symmetry
    init = [part.model.init(initial_revision)]
    cuts = _cuts(ops, through_unknown)
    lo, hi = 0, len(cuts) - 1  # cuts[hi] fails (whole history)
    while lo < hi:
        mid = (lo + hi) // 2
        r = search(ops[: cuts[mid]], init, step, budget, symmetry=sym)
        if r.status == "unknown":
            return "(window search ran out of budget)"
        if r.status == "violation":
            hi = mid
        else:
            lo = mid + 1
    end = cuts[hi]
    start = cuts[hi - 1] if hi > 0 else 0
    states: list[Any] = init
    if start:
        before = search(ops[:start], init, step, budget, collect=True, symmetry=sym)
        if before.status != "ok":
            return None
        states = sorted(before.finals, key=repr)
    carried = [op for op in ops[:start] if op.status != OK]
    window = sorted([*carried, *ops[start:end]], key=lambda o: (o.invoke, o.id))
    if carried and search(window, states, step, budget, symmetry=sym).status != "violation":
        return None
    lines = [f"minimal violating window: ops {start}..{end - 1} of {len(ops)} in this partition"]
    if carried:
        lines[0] += f", with {len(carried)} earlier op(s) of unknown outcome that may apply in it"
    if start:
        shown = ", ".join(_state_text(s) for s in states[:3])
        more = f" (+{len(states) - 3} more)" if len(states) > 3 else ""
        lines.append(f"possible states before it: {shown}{more}")
    lines.extend("  " + op.describe() for op in window)
    witness = _drop_reads(window, states, part.model, budget)
    if len(witness) < len(window):
        lines.append("smallest witness (reads not needed for the violation removed):")
        lines.extend("  " + op.describe() for op in witness)
    return lines


def _is_read(op: Operation) -> bool:
    return op.status == OK and isinstance(op.request, (Range, LeaseExpired))


def _drop_reads(
    window: list[Operation], states: list[Any], model: KVModel, budget: Budget
) -> list[Operation]:
    """Remove reads while the window still fails. Sound: dropping a read only removes
    constraints, so a smaller window that still fails is a genuine witness. (Writes, and
    operations with unknown outcome, may explain other responses and are never dropped.)"""
    cur = window
    for op in reversed(window):
        if not _is_read(op) or len(cur) == 1:
            continue
        trial = [o for o in cur if o is not op]
        if budget.exhausted():
            break
        if search(trial, states, model.step, budget, symmetry=model.symmetry).status == "violation":
            cur = trial
    return cur


def _state_text(state: State) -> str:
    g, recs, revoked = state
    parts = []
    for k, (value, mod, lb, _create, version, lease) in recs:
        at = str(mod) if mod > 0 else f">{lb}"
        parts.append(f"{k}={value!r}@{at} v{version}{f' lease={lease}' if lease else ''}")
    body = ", ".join(parts) if parts else "-"
    return f"{{rev>={g}: {body}}}"
