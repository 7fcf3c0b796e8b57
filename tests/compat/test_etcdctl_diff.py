"""Differential tests: the same etcdctl v3 script against etcd and against conch.

Each GROUP below is a table of steps run on a fresh single-member server of each kind;
the normalised transcripts (see ``etcdctl_script.Normaliser`` for exactly what is
normalised) must be identical. A failure lists every differing step and prints the first
one with both outputs.

- ``test_etcdctl_diff[group]``: etcd vs conch (needs etcd; skips while conch has no
  ``__main__``).
- ``test_selfcheck_etcd_vs_etcd[group]``: etcd vs etcd -- proves the normaliser removes
  only run-to-run noise (marked ``etcd``).

CONCH_REQUIRE_ETCD=1 turns a missing etcd/etcdctl into failures. CONCH_DIFF_DIR=<dir>
writes both normalised transcripts of every group there.

To add coverage, append steps to a group (or add a group). Steps:
``Cmd("get foo -w json")``, ``Cmd("txn -i", input=...)``, ``Cmd(..., binary=True)`` for
``-w protobuf``, ``Watch("watch --rev 2 foo", lines=N)``, and
``WatchStart(id, args, lines)`` ... ``WatchCollect(id)`` around writes. ``{L1}`` in args is
the first lease granted in that run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from devkit.harness import ServerProcess
from tests.compat.etcdctl_script import (
    UNKNOWN_LEASE,
    Cmd,
    Step,
    Transcript,
    Watch,
    WatchCollect,
    WatchStart,
    compare,
    dump,
    run_script,
)

# --------------------------------------------------------------------------- scripts

PUT_GET: list[Step] = [
    Cmd("put foo bar"),  # rev 2
    Cmd("put foo1 bar1"),  # 3
    Cmd("put foo2 bar2 -w json"),  # 4
    Cmd("put fop x -w fields"),  # 5
    Cmd("put zoo z"),  # 6
    Cmd("put foo bar-again"),  # 7: foo version 2
    Cmd("put 'a b' 'v w'"),  # 8: spaces
    Cmd("put ключ значение"),  # 9: utf-8
    Cmd("put fromstdin", input="value-from-stdin"),  # 10
    Cmd("get foo"),
    Cmd("get foo -w json"),
    Cmd("get foo -w fields"),
    Cmd("get foo --prefix -w protobuf", binary=True),
    Cmd("get foo --hex"),
    Cmd("get 'a b'"),
    Cmd("get ключ -w json"),
    Cmd("get fromstdin --print-value-only"),
    Cmd("get foo --prefix"),
    Cmd("get foo --prefix -w json"),
    Cmd("get foo --prefix --limit 2"),
    Cmd("get foo --prefix --limit 2 -w json"),
    Cmd("get foo --prefix --limit 2 -w fields"),
    Cmd("get foo --prefix --limit 3"),
    Cmd("get --from-key foo1"),
    Cmd("get --from-key ''"),
    Cmd("get --from-key '' --limit 3 -w json"),
    Cmd("get --from-key '' --keys-only"),
    Cmd("get foo fop"),  # [foo, fop)
    Cmd("get foo zoo -w json"),
    Cmd("get foo --rev 2"),
    Cmd("get foo --rev 6 -w json"),
    Cmd("get zoo --rev 5 -w json"),  # before creation
    Cmd("get foo --prefix --rev 3"),
    Cmd("get foo --prefix --rev 1 -w json"),
    Cmd("get foo --prefix --keys-only"),
    Cmd("get foo --prefix --keys-only -w json"),
    Cmd("get foo --prefix --print-value-only"),
    Cmd("get foo --consistency=s"),
    Cmd("get missing"),
    Cmd("get missing -w json"),
    Cmd("get missing -w fields"),
    Cmd("get missing --prefix -w json"),
    Cmd("put foo again --prev-kv"),  # 11
    Cmd("put foo again2 --prev-kv -w json"),  # 12
    Cmd("put newkey v --prev-kv -w json"),  # 13, no prev
    Cmd("put foo --ignore-value"),  # 14
    Cmd("put foo sameagain2"),  # 15
    Cmd("put foo sameagain2"),  # 16: identical value, still a revision
    Cmd("get foo -w json"),
    Cmd("get --from-key '' -w json"),
]

SORT: list[Step] = [
    # final state: a: c3 m3 v1 "y"; b: c2 m7 v2 "x2"; c: c5 m11 v3 "m"; d: c4 m10 v4 "q"
    Cmd("put s/b x1"),
    Cmd("put s/a y"),
    Cmd("put s/d z1"),
    Cmd("put s/c w1"),
    Cmd("put s/d z2"),
    Cmd("put s/b x2"),
    Cmd("put s/d z3"),
    Cmd("put s/c w2"),
    Cmd("put s/d q"),
    Cmd("put s/c m"),
    *[
        Cmd(f"get s/ --prefix --sort-by={target} --order={order}")
        for target in ("KEY", "CREATE", "MODIFY", "VALUE", "VERSION")
        for order in ("ASCEND", "DESCEND")
    ],
    Cmd("get s/ --prefix --sort-by=VALUE"),
    Cmd("get s/ --prefix --order=DESCEND"),
    Cmd("get s/ --prefix --sort-by=MODIFY --order=DESCEND --limit 2 -w json"),
    Cmd("get s/ --prefix --sort-by=CREATE --keys-only"),
    Cmd("get s/ --prefix --sort-by=VERSION --order=DESCEND --rev 8"),
    Cmd("get --from-key s/b --sort-by=VALUE --order=DESCEND --limit 1 -w fields"),
]

DELETE: list[Step] = [
    Cmd("put a 1"),  # 2
    Cmd("put b 2"),  # 3
    Cmd("put c 3"),  # 4
    Cmd("put d 4"),  # 5
    Cmd("put e 5"),  # 6
    Cmd("put f/1 x"),  # 7
    Cmd("put f/2 y"),  # 8
    Cmd("put g 6"),  # 9
    Cmd("del a"),  # 10
    Cmd("del a"),  # nothing: no new revision
    Cmd("get a -w json"),
    Cmd("del nothere -w json"),
    Cmd("del b --prev-kv"),  # 11
    Cmd("del c d -w json"),  # [c, d) -> 12
    Cmd("del f/ --prefix --prev-kv -w json"),  # 13
    Cmd("del --from-key e --prev-kv"),  # e, g -> 14
    Cmd("get --from-key '' -w json"),
    Cmd("del zzz --prefix -w fields"),
    Cmd("put a new"),  # 15: recreated, version 1
    Cmd("get a -w json"),
    Cmd("get a --rev 9 -w json"),
    Cmd("get a --rev 10 -w json"),
    Cmd("del --from-key '' -w json"),  # everything -> 16
    Cmd("get --from-key '' -w json"),
    Cmd("del --prefix '' --prev-kv"),  # nothing left
]

TXN_MANY_OPS = "\n" + "\n".join(f"put many{i} v" for i in range(129)) + "\n\n\n"

TXN: list[Step] = [
    Cmd("put k v"),  # 2
    Cmd("put k2 v2"),  # 3
    Cmd("txn -i", input='value("k") = "v"\n\nput k v-new\nget k\n\nput k failed\n\n'),  # 4
    Cmd("txn -i", input='value("k") = "v"\n\nput k x\n\nput fb yes\nget k\n\n'),  # 5 failure
    Cmd("txn", input='version("k") = "2"\nversion("k2") < "5"\n\nget k\nget k2\n\nget fb\n\n'),
    Cmd("txn", input='create("k") = "2"\nmod("k") > "3"\n\ndel k2 --prev-kv\n\nput nope 1\n\n'),
    Cmd("txn -w json", input='create("missing") = "0"\n\nput missing created\n\n\n'),
    Cmd("txn -w json", input='value("nokey") = ""\n\nput t yes\n\nput t no\n\n'),
    Cmd("txn", input='value("k") != "zzz"\n\nget k --prefix\n\n\n'),
    Cmd("txn -w fields", input='mod("k") < "2"\n\n\nget k\nput k3 v3 --prev-kv\n\n'),
    Cmd("txn", input="\n\nget k\n\n\n"),  # no compares: success, read-only
    Cmd("txn -w fields", input="\n\nput k v2 --prev-kv\n\n\n"),
    Cmd("txn", input="\n\nput a 1\nget a\ndel a\n\n\n"),  # duplicate key
    Cmd("txn", input=TXN_MANY_OPS, name="txn with 129 puts (too many ops)"),
    Cmd("txn", input='version("k") > "0"\nvalue("k") = "nomatch"\n\nput z 1\n\nget k\n\n'),
    Cmd("get --from-key '' -w json"),
]

COMPACTION: list[Step] = [
    Cmd("put k v1"),  # 2
    Cmd("put k v2"),  # 3
    Cmd("put k v3"),  # 4
    Cmd("put k v4"),  # 5
    Cmd("put k v5"),  # 6
    Cmd("put other x"),  # 7
    Cmd("del other"),  # 8
    Cmd("compaction 4"),
    Cmd("get k --rev 3"),
    Cmd("get k --rev 4"),
    Cmd("get k --rev 4 -w json"),
    Cmd("get other --rev 7 -w json"),
    Cmd("compaction 4"),
    Cmd("compaction 3"),
    Cmd("compaction 100"),
    Cmd("compaction 6 --physical"),
    Cmd("get k --rev 5"),
    Cmd("get k --rev 6"),
    Watch("watch --rev 2 k", lines=3, limit=4),
    Watch("watch --rev 2 --prefix k -w json", lines=1, limit=4),
    Watch("watch --rev 6 k", lines=3, limit=4),
    # prev_kv of k at rev 5 is compacted away -> omitted; other@7 still there
    Watch("watch --rev 6 --prefix '' --prev-kv", lines=11, limit=4),
    Cmd("endpoint hashkv -w json"),
    Cmd("get --from-key '' -w json"),
]

WATCH: list[Step] = [
    Cmd("put foo 1"),  # 2
    Cmd("put foo2 2"),  # 3
    Cmd("put bar 3"),  # 4
    Cmd("put foo 4"),  # 5
    Cmd("del foo2"),  # 6
    Cmd("put foo/x 5"),  # 7
    Watch("watch --rev 2 --prefix foo", lines=15),
    Watch("watch --rev 2 foo -w json", lines=1),
    Watch("watch --rev 3 foo foo3", lines=9),
    Watch("watch --rev 2 --prefix foo --prev-kv", lines=20),
    Watch("watch --rev 4 bar -w fields", lines=11),
    Watch("watch --rev 2 --prefix ''", lines=18),
    Watch("watch --rev 5 --prefix '' -w json", lines=1),
    Watch("watch --rev 7 foo/x --prev-kv -w json", lines=1),
    WatchStart("W1", "watch --rev 8 --prefix foo", lines=6),
    WatchStart("W2", "watch --rev 10 foo --prev-kv -w json", lines=1),
    Cmd("put foo 9"),  # 8
    Cmd("put bar 10"),  # 9 (not watched)
    Cmd("del foo"),  # 10
    WatchCollect("W1"),
    WatchCollect("W2"),
    Watch("watch --rev 100 foo", lines=1, limit=1.5, grace=0),  # future: nothing yet
]

LEASE: list[Step] = [
    Cmd("lease grant 100"),  # L1
    Cmd("lease grant 200 -w json"),  # L2
    Cmd("lease grant 300 -w fields"),  # L3
    Cmd("lease list"),
    Cmd("lease list -w json"),
    Cmd("put a 1 --lease={L1}"),  # 2
    Cmd("put b 2 --lease={L1}"),  # 3
    Cmd("put c 3 --lease={L2}"),  # 4
    Cmd("get a -w json"),
    Cmd("get --from-key '' -w fields"),
    Cmd("lease timetolive {L1}"),
    Cmd("lease timetolive {L1} --keys"),
    Cmd("lease timetolive {L1} --keys -w json"),
    Cmd("lease timetolive {L1} --keys -w fields"),
    Cmd("lease timetolive {L3} --keys"),
    Cmd("lease keep-alive --once {L1}"),
    Cmd("lease keep-alive --once {L2} -w json"),
    Cmd("lease revoke {L1}"),  # 5: a, b deleted in one revision
    Cmd("get --from-key '' -w json"),
    Cmd("get a --rev 4 -w json"),
    Cmd("lease timetolive {L1}"),
    Cmd("lease timetolive {L1} -w json"),
    Cmd("lease list"),
    Cmd("lease revoke {L1}"),
    Cmd("put d 4 --lease={L1}"),
    Cmd(f"put d 4 --lease={UNKNOWN_LEASE}"),
    Cmd(f"lease keep-alive --once {UNKNOWN_LEASE}"),
    Cmd(f"lease timetolive {UNKNOWN_LEASE}"),
    Cmd(f"lease revoke {UNKNOWN_LEASE}"),
    Cmd("put c 33"),  # 6: lease=0 detaches
    Cmd("get c -w json"),
    Cmd("lease timetolive {L2} --keys"),
    Cmd("put c 333 --lease={L2} --prev-kv -w json"),  # 7
    Cmd("put c --ignore-value"),  # 8: keeps value, lease=0 -> detached
    Cmd("get c -w json"),
    Cmd("put c 3333 --lease={L3}"),  # 9
    Cmd("put c 33333 --ignore-lease"),  # 10: keeps L3
    Cmd("get c -w json"),
    Cmd("lease revoke {L2} -w json"),  # no keys: no revision
    Cmd("lease revoke {L3} -w fields"),  # 11: deletes c
    Cmd("lease list"),
    Cmd("get --from-key '' -w json"),
    Cmd("lease grant 9000000001"),
    # short leases last: they expire (and may bump the revision) a couple of seconds later
    Cmd("lease grant 1"),
    Cmd("lease grant 0 -w json"),
]

ENDPOINT: list[Step] = [
    Cmd("put a 1"),
    Cmd("put b 2"),
    Cmd("del a"),
    Cmd("endpoint status"),
    Cmd("endpoint status -w table"),
    Cmd("endpoint status -w json"),
    Cmd("endpoint status -w fields"),
    Cmd("endpoint health"),
    Cmd("endpoint health -w table"),
    Cmd("endpoint health -w json"),
    Cmd("endpoint health -w fields"),
    Cmd("endpoint hashkv"),
    Cmd("endpoint hashkv -w json"),
    Cmd("endpoint hashkv --rev 2 -w json"),
    Cmd("endpoint hashkv -w table"),
]

ERRORS: list[Step] = [
    Cmd("put foo bar"),  # 2
    Cmd("get foo --rev 100"),
    Cmd("get foo --rev 100 -w json"),
    Cmd("get foo --rev 3"),  # == current + 1: future
    Cmd("get foo --rev -1"),  # <= 0: latest
    Cmd(f"put foo bar --lease={UNKNOWN_LEASE}"),
    Cmd("put '' x"),
    Cmd("get ''"),
    Cmd("del ''"),
    Cmd("put nokey --ignore-value"),
    Cmd("put nokey v --ignore-lease"),
    Cmd("put foo v --ignore-lease"),  # 3: ok
    Cmd("compaction 0"),
    Cmd("compaction 4"),  # future
    Watch("watch --rev 1 --prefix ''", lines=6, limit=4),  # rev 1: nothing compacted yet
    Cmd("get foo --sort-by=BOGUS"),  # client-side
    Cmd("get foo --rev 0"),
    Cmd("put big", input="x" * 1_600_000, name="put big <<< 1.6 MB value (> max-request-bytes)"),
    Cmd("put big", input="y" * 1_000_000, name="put big <<< 1 MB value"),
    Cmd("get big --keys-only -w json"),
    Cmd("endpoint hashkv"),
    Cmd("get missing --rev 3 -w json"),
    Cmd("get foo -w json"),
]

MAINTENANCE: list[Step] = [
    Cmd("put a 1"),
    Cmd("put a 2"),
    Cmd("alarm list"),
    Cmd("member list"),
    Cmd("member list -w table"),
    Cmd("member list -w json"),
    Cmd("endpoint status --cluster -w json"),
    Cmd("endpoint health --cluster"),
    Cmd("compaction 3"),
    Cmd("defrag"),
    Cmd("endpoint hashkv"),
    Cmd("get a -w json"),
]

GROUPS: dict[str, list[Step]] = {
    "put_get": PUT_GET,
    "sort": SORT,
    "delete": DELETE,
    "txn": TXN,
    "compaction": COMPACTION,
    "watch": WATCH,
    "lease": LEASE,
    "endpoint": ENDPOINT,
    "errors": ERRORS,
    "maintenance": MAINTENANCE,
}


# --------------------------------------------------------------------------- tests


def _save(group: str, *transcripts: Transcript) -> None:
    out = os.environ.get("CONCH_DIFF_DIR")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    for i, tr in enumerate(transcripts):
        Path(out, f"{group}.{i}.{tr.kind}.txt").write_text(dump(tr))


def _run_pair(
    server_factory: Callable[..., ServerProcess], group: str, kind_a: str, kind_b: str
) -> tuple[Transcript, Transcript]:
    # start both first (their startups overlap), then run the script on each in turn
    # same member name, and conch gets etcd's peer/cluster flags too, so `member list`
    # and friends are comparable
    extra = {"conch": {"peer_flags": True}}
    a = server_factory(kind_a, start=False, name="node", **extra.get(kind_a, {}))
    b = server_factory(kind_b, start=False, name="node", **extra.get(kind_b, {}))
    a.spawn()
    b.spawn()
    for srv in (a, b):
        try:
            srv.wait_ready()
        except Exception:
            print(f"{srv.name} failed to start; log tail:\n{srv.log_tail()}")
            raise
    ta = run_script(a, GROUPS[group])
    tb = run_script(b, GROUPS[group])
    _save(group, ta, tb)
    return ta, tb


@pytest.mark.etcd
@pytest.mark.parametrize("group", list(GROUPS))
def test_selfcheck_etcd_vs_etcd(server_factory: Callable[..., ServerProcess], group: str) -> None:
    ta, tb = _run_pair(server_factory, group, "etcd", "etcd")
    report = compare(ta, tb)
    assert report is None, "normaliser leaves run-to-run noise:\n" + report


@pytest.mark.etcd
@pytest.mark.parametrize("group", list(GROUPS))
def test_etcdctl_diff(server_factory: Callable[..., ServerProcess], group: str) -> None:
    ta, tb = _run_pair(server_factory, group, "etcd", "conch")
    report = compare(ta, tb)
    assert report is None, report
