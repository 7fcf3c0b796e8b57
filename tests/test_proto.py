"""conch/proto: generated modules import, are up to date, and match etcd's wire schema."""

from __future__ import annotations

import filecmp
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "conch" / "proto"

PB2_MODULES = [
    "conch.proto.mvccpb.kv_pb2",
    "conch.proto.authpb.auth_pb2",
    "conch.proto.etcdserverpb.rpc_pb2",
    "conch.proto.etcdserverpb.raft_internal_pb2",
    "conch.proto.etcdserverpb.etcdserver_pb2",
    "conch.proto.raftpb.raft_pb2",
    "conch.proto.walpb.record_pb2",
    "conch.proto.snappb.snap_pb2",
    "conch.proto.leasepb.lease_pb2",
    "conch.proto.membershippb.membership_pb2",
    "conch.proto.v3electionpb.v3election_pb2",
    "conch.proto.v3lockpb.v3lock_pb2",
]
GRPC_MODULES = [
    "conch.proto.etcdserverpb.rpc_pb2_grpc",
    "conch.proto.v3electionpb.v3election_pb2_grpc",
    "conch.proto.v3lockpb.v3lock_pb2_grpc",
]


# ---------------------------------------------------------------- (a) imports


@pytest.mark.parametrize("name", PB2_MODULES + GRPC_MODULES)
def test_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_every_proto_has_a_module() -> None:
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    mods = {
        ".".join(p.relative_to(REPO).with_suffix("").parts) + "_pb2" for p in protos
    }
    assert mods == set(PB2_MODULES)
    for p in protos:
        assert (p.parent / "__init__.py").exists(), p.parent


# ------------------------------------------------- (b) committed == regenerated


def _generated_files(root: Path) -> dict[str, Path]:
    base = root / "conch" / "proto"
    return {
        str(p.relative_to(root)): p
        for p in base.rglob("*")
        if p.is_file() and (p.name.endswith("_pb2.py") or p.name.endswith("_pb2_grpc.py")
                            or p.name.endswith("_pb2.pyi"))
    }


def test_generated_files_are_up_to_date(tmp_path: Path) -> None:
    try:
        import grpc_tools  # noqa: F401
        from grpc_tools import protoc  # noqa: F401
    except ImportError:
        pytest.skip("grpc_tools is not importable (pip install grpcio-tools==1.85.1)")
    from importlib.metadata import version

    if version("grpcio-tools") != "1.85.1":
        pytest.skip(
            f"grpcio-tools {version('grpcio-tools')} installed; the committed files "
            "were generated with 1.85.1, so byte comparison is meaningless"
        )
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run scripts/gen_proto.sh")
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True, cwd=REPO, env=env, capture_output=True,
    )
    fresh = _generated_files(tmp_path)
    committed = _generated_files(REPO)
    assert sorted(fresh) == sorted(committed), "generated file set differs (scripts/gen_proto.sh)"
    stale = [k for k in fresh if not filecmp.cmp(fresh[k], committed[k], shallow=False)]
    assert not stale, f"stale generated files (run scripts/gen_proto.sh): {stale}"


# --------------------------------------------------------------- (c) wire checks

from conch.proto.authpb import auth_pb2  # noqa: E402
from conch.proto.etcdserverpb import etcdserver_pb2, raft_internal_pb2, rpc_pb2  # noqa: E402
from conch.proto.leasepb import lease_pb2  # noqa: E402
from conch.proto.membershippb import membership_pb2  # noqa: E402
from conch.proto.mvccpb import kv_pb2  # noqa: E402
from conch.proto.raftpb import raft_pb2  # noqa: E402
from conch.proto.snappb import snap_pb2  # noqa: E402
from conch.proto.walpb import record_pb2  # noqa: E402


def test_range_request_bytes() -> None:
    b = rpc_pb2.RangeRequest(key=b"a", range_end=b"b", limit=5).SerializeToString()
    assert b == b"\x0a\x01a\x12\x01b\x18\x05"
    b = rpc_pb2.RangeRequest(
        key=b"k", sort_order=rpc_pb2.RangeRequest.DESCEND,
        sort_target=rpc_pb2.RangeRequest.MOD, max_create_revision=1,
    ).SerializeToString()
    assert b == b"\x0a\x01k\x28\x02\x30\x03\x68\x01"


def test_compare_range_end_is_field_64() -> None:
    f = rpc_pb2.Compare.DESCRIPTOR.fields_by_name["range_end"]
    assert f.number == 64
    # tag = (64 << 3) | 2 = 514 = varint 0x82 0x04
    assert rpc_pb2.Compare(range_end=b"z").SerializeToString() == b"\x82\x04\x01z"
    c = rpc_pb2.Compare(result=rpc_pb2.Compare.NOT_EQUAL, target=rpc_pb2.Compare.LEASE,
                        key=b"k", lease=0)
    # oneof member set to zero is still written (presence)
    assert c.SerializeToString() == b"\x08\x03\x10\x04\x1a\x01k\x40\x00"


def test_watch_messages() -> None:
    assert rpc_pb2.WatchResponse.DESCRIPTOR.fields_by_name["events"].number == 11
    w = rpc_pb2.WatchResponse(watch_id=1, events=[kv_pb2.Event(type=kv_pb2.Event.DELETE)])
    assert w.SerializeToString() == b"\x10\x01\x5a\x02\x08\x01"
    req = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
        key=b"a", filters=[rpc_pb2.WatchCreateRequest.NOPUT, rpc_pb2.WatchCreateRequest.NODELETE],
        watch_id=3, fragment=True))
    # proto3 repeated enum is packed, as in etcd
    assert req.SerializeToString() == b"\x0a\x0b\x0a\x01a\x2a\x02\x00\x01\x38\x03\x40\x01"
    assert rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()) \
        .SerializeToString() == b"\x1a\x00"


def test_internal_raft_request_numbers() -> None:
    irr = raft_internal_pb2.InternalRaftRequest
    expected = {
        "header": 100, "ID": 1, "v2": 2, "range": 3, "put": 4, "delete_range": 5, "txn": 6,
        "compaction": 7, "lease_grant": 8, "lease_revoke": 9, "alarm": 10,
        "lease_checkpoint": 11, "auth_enable": 1000, "auth_disable": 1011,
        "authenticate": 1012, "auth_status": 1013, "auth_user_add": 1100,
        "auth_user_delete": 1101, "auth_user_get": 1102, "auth_user_change_password": 1103,
        "auth_user_grant_role": 1104, "auth_user_revoke_role": 1105, "auth_user_list": 1106,
        "auth_role_list": 1107, "auth_role_add": 1200, "auth_role_delete": 1201,
        "auth_role_get": 1202, "auth_role_grant_permission": 1203,
        "auth_role_revoke_permission": 1204, "cluster_version_set": 1300,
        "cluster_member_attr_set": 1301, "downgrade_info_set": 1302,
        "downgrade_version_test": 9900,
    }
    assert {f.name: f.number for f in irr.DESCRIPTOR.fields} == expected
    b = irr(header=raft_internal_pb2.RequestHeader(ID=7),
            put=rpc_pb2.PutRequest(key=b"k")).SerializeToString()
    # put (4) then header (100 -> tag 802 = 0xa2 0x06), in field-number order
    assert b == b"\x22\x03\x0a\x01k\xa2\x06\x02\x08\x07"
    # auth_enable = 1000 -> tag 8002 = 0xc2 0x3e
    assert irr(auth_enable=rpc_pb2.AuthEnableRequest()).SerializeToString() == b"\xc2\x3e\x00"
    rh = raft_internal_pb2.RequestHeader(ID=1, username="u", auth_revision=2)
    assert rh.SerializeToString() == b"\x08\x01\x12\x01u\x18\x02"
    assert etcdserver_pb2.Request.DESCRIPTOR.fields_by_name["Refresh"].number == 17
    cv = irr(cluster_version_set=membership_pb2.ClusterVersionSetRequest(ver="3.5.0"))
    assert cv.SerializeToString() == b"\xa2\x51\x07\x0a\x053.5.0"


def test_raftpb_entry_and_friends() -> None:
    e = raft_pb2.Entry(Term=1, Index=2, Type=raft_pb2.EntryNormal, Data=b"x")
    # Type=1, Term=2, Index=3, Data=4; proto2 writes the explicitly-set zero Type
    assert e.SerializeToString() == b"\x08\x00\x10\x01\x18\x02\x22\x01x"
    assert raft_pb2.Entry(Type=raft_pb2.EntryConfChangeV2).SerializeToString() == b"\x08\x02"
    # proto2 repeated scalars are NOT packed (as in etcd)
    cs = raft_pb2.ConfState(voters=[1, 2], learners=[3], auto_leave=False)
    assert cs.SerializeToString() == b"\x08\x01\x08\x02\x10\x03\x28\x00"
    hs = raft_pb2.HardState(term=1, vote=2, commit=3)
    assert hs.SerializeToString() == b"\x08\x01\x10\x02\x18\x03"
    cc = raft_pb2.ConfChange(id=9, type=raft_pb2.ConfChangeRemoveNode, node_id=5)
    assert cc.SerializeToString() == b"\x08\x09\x10\x01\x18\x05"
    m = raft_pb2.Message(type=raft_pb2.MsgApp, to=2, vote=4, responses=[raft_pb2.Message()])
    assert m.SerializeToString() == b"\x08\x03\x10\x02\x68\x04\x72\x00"
    assert raft_pb2.MessageType.Value("MsgForgetLeader") == 23
    assert raft_pb2.Message.DESCRIPTOR.fields_by_name["from"].number == 3
    sm = raft_pb2.SnapshotMetadata(conf_state=raft_pb2.ConfState(voters=[1]), index=2, term=3)
    assert sm.SerializeToString() == b"\x0a\x02\x08\x01\x10\x02\x18\x03"


def test_wal_snap_lease_records() -> None:
    r = record_pb2.Record(type=2, crc=0xDEADBEEF, data=b"")
    assert r.SerializeToString() == b"\x08\x02\x10\xef\xfd\xb6\xf5\x0d\x1a\x00"
    s = record_pb2.Snapshot(index=5, term=1, conf_state=raft_pb2.ConfState(voters=[1]))
    assert s.SerializeToString() == b"\x08\x05\x10\x01\x1a\x02\x08\x01"
    md = etcdserver_pb2.Metadata(NodeID=1, ClusterID=2)
    assert md.SerializeToString() == b"\x08\x01\x10\x02"
    assert snap_pb2.snapshot(crc=1, data=b"d").SerializeToString() == b"\x08\x01\x12\x01d"
    lease = lease_pb2.Lease(ID=1, TTL=5, RemainingTTL=3)
    assert lease.SerializeToString() == b"\x08\x01\x10\x05\x18\x03"


def test_kv_and_auth() -> None:
    kv = kv_pb2.KeyValue(key=b"k", create_revision=2, mod_revision=3, version=1,
                         value=b"v", lease=-1)
    assert kv.SerializeToString() == (
        b"\x0a\x01k\x10\x02\x18\x03\x20\x01\x2a\x01v"
        b"\x30\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    )
    p = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"a", range_end=b"b")
    assert p.SerializeToString() == b"\x08\x02\x12\x01a\x1a\x01b"
    u = auth_pb2.User(name=b"n", roles=["r"], options=auth_pb2.UserAddOptions(no_password=True))
    assert u.SerializeToString() == b"\x0a\x01n\x1a\x01r\x22\x02\x08\x01"


def test_status_and_hashkv_36_fields() -> None:
    f = rpc_pb2.StatusResponse.DESCRIPTOR.fields_by_name
    assert (f["storageVersion"].number, f["dbSizeQuota"].number, f["downgradeInfo"].number) == (
        11, 12, 13)
    assert rpc_pb2.HashKVResponse.DESCRIPTOR.fields_by_name["hash_revision"].number == 4
    assert rpc_pb2.SnapshotResponse.DESCRIPTOR.fields_by_name["version"].number == 4
    assert rpc_pb2.AlarmType.Value("CORRUPT") == 2
    assert rpc_pb2.DowngradeRequest.DowngradeAction.Value("CANCEL") == 2


# etcd 3.5/3.6 service methods, in declaration order:
# (method, client_streaming, server_streaming)
ETCD_SERVICES = {
    "etcdserverpb.KV": [
        ("Range", 0, 0), ("Put", 0, 0), ("DeleteRange", 0, 0), ("Txn", 0, 0), ("Compact", 0, 0)],
    "etcdserverpb.Watch": [("Watch", 1, 1)],
    "etcdserverpb.Lease": [
        ("LeaseGrant", 0, 0), ("LeaseRevoke", 0, 0), ("LeaseKeepAlive", 1, 1),
        ("LeaseTimeToLive", 0, 0), ("LeaseLeases", 0, 0)],
    "etcdserverpb.Cluster": [
        ("MemberAdd", 0, 0), ("MemberRemove", 0, 0), ("MemberUpdate", 0, 0),
        ("MemberList", 0, 0), ("MemberPromote", 0, 0)],
    "etcdserverpb.Maintenance": [
        ("Alarm", 0, 0), ("Status", 0, 0), ("Defragment", 0, 0), ("Hash", 0, 0),
        ("HashKV", 0, 0), ("Snapshot", 0, 1), ("MoveLeader", 0, 0), ("Downgrade", 0, 0)],
    "etcdserverpb.Auth": [
        ("AuthEnable", 0, 0), ("AuthDisable", 0, 0), ("AuthStatus", 0, 0),
        ("Authenticate", 0, 0), ("UserAdd", 0, 0), ("UserGet", 0, 0), ("UserList", 0, 0),
        ("UserDelete", 0, 0), ("UserChangePassword", 0, 0), ("UserGrantRole", 0, 0),
        ("UserRevokeRole", 0, 0), ("RoleAdd", 0, 0), ("RoleGet", 0, 0), ("RoleList", 0, 0),
        ("RoleDelete", 0, 0), ("RoleGrantPermission", 0, 0), ("RoleRevokePermission", 0, 0)],
}


def test_etcdserverpb_services_match_etcd() -> None:
    got = {
        s.full_name: [(m.name, int(m.client_streaming), int(m.server_streaming))
                      for m in s.methods]
        for s in rpc_pb2.DESCRIPTOR.services_by_name.values()
    }
    assert got == ETCD_SERVICES
    paths = {f"/{svc}/{m}" for svc, ms in ETCD_SERVICES.items() for m, _, _ in ms}
    assert "/etcdserverpb.KV/Range" in paths and len(paths) == 41


def test_request_response_types() -> None:
    svc = rpc_pb2.DESCRIPTOR.services_by_name
    m = svc["KV"].methods_by_name["Compact"]
    assert (m.input_type.full_name, m.output_type.full_name) == (
        "etcdserverpb.CompactionRequest", "etcdserverpb.CompactionResponse")
    m = svc["Auth"].methods_by_name["UserAdd"]
    assert m.input_type.full_name == "etcdserverpb.AuthUserAddRequest"


def test_election_and_lock_services() -> None:
    from conch.proto.v3electionpb import v3election_pb2
    from conch.proto.v3lockpb import v3lock_pb2

    el = v3election_pb2.DESCRIPTOR.services_by_name["Election"]
    assert [(m.name, m.server_streaming) for m in el.methods] == [
        ("Campaign", False), ("Proclaim", False), ("Leader", False), ("Observe", True),
        ("Resign", False)]
    assert el.full_name == "v3electionpb.Election"
    lk = v3lock_pb2.DESCRIPTOR.services_by_name["Lock"]
    assert lk.full_name == "v3lockpb.Lock" and [m.name for m in lk.methods] == ["Lock", "Unlock"]
    key = v3election_pb2.LeaderKey(name=b"e", key=b"k", rev=3, lease=4)
    assert key.SerializeToString() == b"\x0a\x01e\x12\x01k\x18\x03\x20\x04"


def test_roundtrip_unknown_fields_survive() -> None:
    # a field this schema lacks (RequestHeader.requester_member_id = 4, etcd 3.7) is kept
    raw = b"\x08\x01\x20\x05"
    rh = raft_internal_pb2.RequestHeader.FromString(raw)
    assert rh.ID == 1 and rh.SerializeToString() == raw
