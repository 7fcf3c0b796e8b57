"""KV, txn and error mapping through conch.client.Client against etcd 3.4 and conch."""

from __future__ import annotations

import pytest

from conch.client import Client, Compare, GetResult, Op, PutResult, TxnResult
from conch.client import errors as errs


def keys(r: GetResult) -> list[bytes]:
    return [kv.key for kv in r.kvs]


def test_put_get_delete_options(client: Client) -> None:
    r = client.put("a", "1")
    rev_a = r.header.revision
    assert r.prev_kv is None
    r = client.put("a", b"2", prev_kv=True)
    assert r.prev_kv is not None and r.prev_kv.value == b"1"
    for k in ("b", "ba", "bb", "c"):
        client.put(k, k.upper())
    g = client.get("a")
    assert [(kv.key, kv.value, kv.version) for kv in g.kvs] == [(b"a", b"2", 2)]
    assert g.count == 1 and not g.more and g.header.revision >= rev_a
    assert client.get("missing").kvs == []
    assert keys(client.get("b", prefix=True)) == [b"b", b"ba", b"bb"]
    assert keys(client.get("b", range_end="bb")) == [b"b", b"ba"]
    assert keys(client.get("bb", from_key=True)) == [b"bb", b"c"]
    assert client.get("a", revision=rev_a).kvs[0].value == b"1"
    lim = client.get("b", prefix=True, limit=2)
    assert keys(lim) == [b"b", b"ba"] and lim.more and lim.count == 3
    ko = client.get("b", prefix=True, keys_only=True)
    assert [kv.value for kv in ko.kvs] == [b"", b"", b""]
    co = client.get("b", prefix=True, count_only=True)
    assert co.kvs == [] and co.count == 3
    desc = client.get("b", prefix=True, sort_order="descend", sort_target="key")
    assert keys(desc) == [b"bb", b"ba", b"b"]
    by_value = client.get("", prefix=True, sort_order="descend", sort_target="value")
    assert keys(by_value)[:2] == [b"c", b"bb"]  # values C, BB, BA, B, 2
    ser = client.get("a", serializable=True)
    assert ser.kvs[0].value == b"2"
    rev_ba = client.get("ba").kvs[0].mod_revision
    assert keys(client.get("", prefix=True, min_mod_revision=rev_ba)) == [b"ba", b"bb", b"c"]
    assert keys(client.get("", prefix=True, max_mod_revision=rev_ba)) == [b"a", b"b", b"ba"]
    assert keys(client.get("", prefix=True, min_create_revision=rev_ba + 1)) == [b"bb", b"c"]
    assert keys(client.get("", prefix=True, max_create_revision=rev_a)) == [b"a"]
    assert client.get("", prefix=True).raw.count == 5

    d = client.delete("b", prefix=True, prev_kv=True)
    assert d.deleted == 3 and sorted(kv.key for kv in d.prev_kvs) == [b"b", b"ba", b"bb"]
    assert client.delete("nothing").deleted == 0
    client.put("x1", "")
    client.put("x2", "")
    assert client.delete("x1", range_end="x2").deleted == 1
    assert client.delete("x2", from_key=True).deleted == 1  # x2 (and nothing after)
    assert client.delete("a").deleted == 1 and client.delete("c").deleted == 1
    assert client.get("", prefix=True).count == 0


def test_put_ignore_value_and_lease(client: Client) -> None:
    lease = client.lease_grant(60)
    client.put("k", "v", lease=lease.id)
    r = client.put("k", "", ignore_value=True)
    kv = client.get("k").kvs[0]
    assert (kv.value, kv.lease) == (b"v", 0)  # lease=0 without ignore_lease detaches
    client.put("k", "w", lease=lease.id)
    client.put("k", "z", ignore_lease=True)
    kv = client.get("k").kvs[0]
    assert (kv.value, kv.lease) == (b"z", lease.id)
    assert r.header.revision > 0
    with pytest.raises(errs.KeyNotFound):
        client.put("absent", "", ignore_value=True)
    with pytest.raises(errs.ValueProvided):
        client.put("k", "v", ignore_value=True)
    with pytest.raises(errs.LeaseProvided):
        client.put("k", "v", lease=lease.id, ignore_lease=True)
    with pytest.raises(errs.EmptyKey):
        client.put("", "v")


def test_txn_compare_targets(client: Client) -> None:
    lease = client.lease_grant(60)
    p = client.put("t", "v1", lease=lease.id)
    rev = p.header.revision
    ok: list[Compare] = [
        Compare.value("t") == "v1",
        Compare.value("t") != "v2",
        Compare.version("t") == 1,
        Compare.version("t") > 0,
        Compare.create("t") == rev,
        Compare.mod("t") < rev + 1,
        Compare.mod("t") > rev - 1,
        Compare.lease("t") == lease.id,
        Compare.create("absent") == 0,
        Compare.version("absent") == 0,
    ]
    for c in ok:
        assert client.txn([c], [], []).succeeded, c
    bad = [Compare.value("t") == "no", Compare.value("absent") != "x", Compare.version("t") > 1,
           Compare.lease("t") == 0, Compare.mod("t") < rev]  # fmt: skip
    for c in bad:
        assert not client.txn([c], [], []).succeeded, c
    assert client.txn(ok, [], []).succeeded  # ANDed
    assert not client.txn([*ok, bad[0]], [], []).succeeded


def test_txn_branches_range_compares_and_nesting(client: Client) -> None:
    client.put("r/a", "1")
    client.put("r/b", "1")
    client.put("r/c", "2")
    # range compares: every key in the range must satisfy
    assert client.txn([Compare.value("r/a", range_end="r/c") == "1"]).succeeded
    assert not client.txn([Compare.value("r/", prefix=True) == "1"]).succeeded
    assert client.txn([Compare.version("r/", prefix=True) > 0]).succeeded

    r = client.txn(
        [Compare.value("r/a") == "1"],
        [Op.put("r/d", "4", prev_kv=True), Op.get("r/", prefix=True),
         Op.delete("r/c", prev_kv=True)],
        [Op.put("never", "x")],
    )  # fmt: skip
    assert isinstance(r, TxnResult) and r.succeeded and len(r.responses) == 3
    put_r, get_r, del_r = r.responses
    assert isinstance(put_r, PutResult) and put_r.prev_kv is None
    assert isinstance(get_r, GetResult) and keys(get_r) == [b"r/a", b"r/b", b"r/c", b"r/d"]
    assert del_r.deleted == 1  # type: ignore[union-attr]
    assert client.get("never").kvs == []

    f = client.txn([Compare.value("r/a") == "x"], [Op.put("s", "1")], [Op.get("r/a")])
    assert not f.succeeded and keys(f.responses[0]) == [b"r/a"]  # type: ignore[arg-type]

    nested = client.txn(
        [],
        [Op.txn([Compare.create("n") == 0], [Op.put("n", "1")], [Op.put("n", "2")]),
         Op.get("n")],
    )  # fmt: skip
    inner = nested.responses[0]
    assert isinstance(inner, TxnResult) and inner.succeeded
    assert client.get("n").kvs[0].value == b"1"
    # a read-only txn
    ro = client.txn([], [Op.get("n", serializable=True)])
    assert ro.succeeded and keys(ro.responses[0]) == [b"n"]  # type: ignore[arg-type]


def test_errors_are_typed(client: Client) -> None:
    for i in range(5):
        client.put("e", str(i))
    cur = client.get("e").header.revision
    with pytest.raises(errs.FutureRevision) as fut:
        client.get("e", revision=cur + 100)
    assert fut.value.message == "etcdserver: mvcc: required revision is a future revision"
    client.compact(cur - 1, physical=True)
    with pytest.raises(errs.Compacted):
        client.get("e", revision=cur - 3)
    with pytest.raises(errs.Compacted):
        client.compact(cur - 2)
    assert client.get("e", revision=cur - 1).kvs[0].value == b"3"
    with pytest.raises(errs.LeaseNotFound):
        client.put("e", "v", lease=123456789)
    with pytest.raises(errs.LeaseNotFound):
        client.lease_revoke(123456789)
    with pytest.raises(errs.TooManyOps):
        client.txn([], [Op.put(f"k{i}", "v") for i in range(129)])
    with pytest.raises(errs.DuplicateKey):
        client.txn([], [Op.put("d", "1"), Op.put("d", "2")])
    with pytest.raises(errs.DuplicateKey):
        client.txn([], [Op.delete("d", prefix=True), Op.txn([], [Op.put("d1", "2")])])
    l1 = client.lease_grant(60, lease_id=4242)
    assert l1.id == 4242
    with pytest.raises(errs.LeaseExists):
        client.lease_grant(60, lease_id=4242)
    assert isinstance(fut.value, errs.ClientError)
