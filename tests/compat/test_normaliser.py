"""Unit tests of the etcdctl transcript normaliser (no servers needed)."""

from __future__ import annotations

from tests.compat.etcdctl_script import Normaliser


def test_small_lease_ids_do_not_clobber_revisions() -> None:
    n = Normaliser()
    assert n.text("lease 0000000000000002 granted with TTL(100s)\n", "lease grant 100") == (
        "lease <L1> granted with TTL(100s)\n"
    )
    out = n.text(
        '{"header":{"cluster_id":5,"member_id":7,"revision":2,"raft_term":1},'
        '"kvs":[{"key":"YQ==","create_revision":2,"mod_revision":2,"version":1,"lease":2}]}',
        "get a -w json",
    )
    assert '"revision":2' in out and '"create_revision":2' in out and '"version":1' in out
    assert '"lease":<L1>' in out
    assert '"cluster_id":<C1>' in out and '"member_id":<M1>' in out
    assert n.substitute("put a 1 --lease={L1}") == "put a 1 --lease=2"


def test_leases_numbered_in_order_of_appearance_hex_and_decimal() -> None:
    n = Normaliser()
    n.text("lease 694d7fb0a0b0c0d1 granted with TTL(5s)\n", "lease grant 5")
    out = n.text(f'{{"ID":{0x694D7FB0A0B0C0D2},"TTL":5}}', "lease grant 5 -w json")
    assert out == '{"ID":<L2>,"TTL":5}'
    out = n.text("found 2 leases\n694d7fb0a0b0c0d2\n694d7fb0a0b0c0d1\n", "lease list")
    assert out == "found 2 leases\n<L2>\n<L1>\n"


def test_remaining_ttl_tolerance_and_key_order() -> None:
    n = Normaliser()
    ok = n.text(
        "lease 0000000000000001 granted with TTL(100s), remaining(98s), attached keys([b a])\n",
        "lease timetolive 1 --keys",
    )
    assert ok == "lease <L1> granted with TTL(100s), remaining(<~100s>), attached keys([a b])\n"
    bad = n.text("lease 0000000000000001 granted with TTL(100s), remaining(50s)\n", "x")
    assert "remaining(50s)" in bad


def test_client_log_lines_keep_error_text() -> None:
    n = Normaliser()
    line = (
        '{"level":"warn","ts":"2026-01-01T00:00:00.000Z","caller":"x.go:1","msg":"retrying",'
        '"target":"endpoint://client-1/127.0.0.1:1234","attempt":0,'
        '"error":"rpc error: code = OutOfRange desc = etcdserver: boom"}\nError: boom\n'
    )
    out = n.text(line, "get a")
    assert "code = OutOfRange desc = etcdserver: boom" in out
    assert "ts" not in out and "client-1" not in out
    assert out.endswith("Error: boom\n")
