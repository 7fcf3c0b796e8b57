"""conch.wal: etcd-format WAL (real files in tmp_path, no mocks)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from crc32c import crc32c

from conch.proto.raftpb.raft_pb2 import ConfState, Entry, HardState
from conch.proto.walpb import record_pb2
from conch.wal import (
    WAL,
    CorruptWALError,
    CRCMismatchError,
    MetadataConflictError,
    SnapshotMismatchError,
    SnapshotNotFoundError,
    UnexpectedEOFError,
    WALError,
    WalSnapshot,
    decode_metadata,
    encode_metadata,
    exists,
    purge,
    repair,
    valid_snapshot_entries,
    wal_name,
)
from conch.wal.frame import (
    CRC_TYPE,
    ENTRY_TYPE,
    METADATA_TYPE,
    STATE_TYPE,
    decode_record,
    encode_frame,
    encode_record,
    scan_segment,
)

META = encode_metadata(0x1234, 0xABCD)


def ents(lo: int, hi: int, term: int = 1, size: int = 16) -> list[Entry]:
    return [Entry(Term=term, Index=i, Data=((b"%d:" % i) * size)[:size]) for i in range(lo, hi + 1)]


def idx(es: list[Entry]) -> list[int]:
    return [e.Index for e in es]


def segments(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.endswith(".wal"))


def frames(buf: bytes) -> list[tuple[int, int, record_pb2.Record]]:
    """(offset, frame length, Record) of every frame, parsed independently with record_pb2."""
    out = []
    off = 0
    while off + 8 <= len(buf):
        (word,) = struct.unpack_from("<Q", buf, off)
        if word == 0:
            break
        n = word & ((1 << 56) - 1)
        pad = (word >> 56) & 7 if word >> 63 else 0
        out.append((off, 8 + n + pad, record_pb2.Record.FromString(buf[off + 8 : off + 8 + n])))
        off += 8 + n + pad
    return out


def read(d: Path, snap: WalSnapshot | None = None) -> tuple[bytes, HardState, list[Entry]]:
    w = WAL.open(str(d), snap or WalSnapshot())
    try:
        return w.read_all()
    finally:
        w.close()


# --------------------------------------------------------------------------- frame format


def test_crc32c_is_castagnoli() -> None:
    # The CRC-32C check value (RFC 3720 / iSCSI): crc32c("123456789") = 0xE3069283.
    assert crc32c(b"123456789") == 0xE3069283
    # rolling: continuing from a previous value equals one pass over the concatenation
    assert crc32c(b"456789", crc32c(b"123")) == 0xE3069283


def test_frame_exact_bytes() -> None:
    # Record{type=2 (Entry), crc=crc32c("abc")=0x364B3FB7, data="abc"} marshalled as proto2:
    #   08 02                 field 1 varint 2
    #   10 b7 ff ac b2 03     field 2 varint 0x364B3FB7
    #   1a 03 61 62 63        field 3 length 3 "abc"
    # = 13 bytes -> 3 bytes of padding -> length word 13 | (0x80|3) << 56, little endian.
    assert crc32c(b"abc") == 0x364B3FB7
    expected = bytes.fromhex("0d00000000000083" "0802" "10b7ffacb203" "1a03616263" "000000")
    assert encode_frame(ENTRY_TYPE, 0x364B3FB7, b"abc") == expected
    assert len(expected) % 8 == 0

    # CRC record: Record{type=4, crc=0}, no data -> 08 04 10 00, 4 bytes, pad 4 -> top byte 0x84
    crc_frame = bytes.fromhex("0400000000000084" "08041000" "00000000")
    assert encode_frame(CRC_TYPE, 0, None) == crc_frame

    # A record whose length is a multiple of 8 has no padding: top byte is 0.
    data = b"\x00" * 6  # crc32c of 6 zero bytes needs a 5-byte varint: 2+6+2+6 = 16 bytes
    crc = crc32c(data)
    assert crc >= 1 << 28
    f = encode_frame(ENTRY_TYPE, crc, data)
    assert f[:8] == struct.pack("<Q", 16)
    assert len(f) == 24


def test_record_encoding_matches_protobuf() -> None:
    for rtype, crc, data in [
        (ENTRY_TYPE, 0xDEADBEEF, b"hello"),
        (METADATA_TYPE, 1, b""),
        (STATE_TYPE, 0, b"\x08\x01"),
        (CRC_TYPE, 0x7FFFFFFF, None),
        (ENTRY_TYPE, 5, b"x" * 300),
    ]:
        rec = record_pb2.Record(type=rtype, crc=crc)
        if data is not None:
            rec.data = data
        assert encode_record(rtype, crc, data) == rec.SerializeToString()
        raw = rec.SerializeToString()
        assert decode_record(raw, 0, len(raw)) == (rtype, crc, data or b"")


def test_decode_etcd_test_vector() -> None:
    # etcd server/storage/wal/record_test.go: a legacy (unpadded) 14-byte metadata record.
    info_data = b"\x08\xef\xfd\x02"
    info_record = (b"\x0e\x00\x00\x00\x00\x00\x00\x00"
                   b"\x08\x01\x10\x99\xb5\xe4\xd0\x03\x1a\x04" + info_data)
    scan = scan_segment(info_record, "vec", 0, True)
    assert scan.error is None
    assert [(t, d) for t, d, _ in scan.records] == [(METADATA_TYPE, info_data)]
    assert scan.crc == crc32c(info_data)
    # etcd's truncated variants are torn (io.ErrUnexpectedEOF)
    for cut in (14, len(info_record) - len(info_data), len(info_record) - 8):
        assert isinstance(scan_segment(info_record[:cut], "vec", 0, True).error, UnexpectedEOFError)
    # a bad CRC in a non-last segment is a CRC mismatch (never torn)
    bad = info_record[:-1] + b"a"
    assert isinstance(scan_segment(bad, "vec", 0, False).error, CRCMismatchError)


# --------------------------------------------------------------------------- basics


def test_create_layout_and_exists(tmp_path: Path) -> None:
    d = tmp_path / "member" / "wal"
    assert not exists(str(d))
    w = WAL.create(str(d), META)
    w.close()
    assert exists(str(d))
    assert not (tmp_path / "member" / "wal.tmp").exists()
    assert [p.name for p in segments(d)] == ["0000000000000000-0000000000000000.wal"]
    recs = [r for _, _, r in frames(segments(d)[0].read_bytes())]
    assert [r.type for r in recs] == [CRC_TYPE, METADATA_TYPE, 5]
    assert recs[0].crc == 0 and not recs[0].HasField("data")
    assert recs[1].data == META and recs[1].crc == crc32c(META)
    snap = record_pb2.Snapshot.FromString(recs[2].data)
    assert (snap.index, snap.term) == (0, 0)
    assert recs[2].crc == crc32c(recs[2].data, crc32c(META))
    with pytest.raises(FileExistsError):
        WAL.create(str(d), META)
    assert decode_metadata(META) == (0x1234, 0xABCD)


def test_round_trip(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META)
    w.save(HardState(term=1, vote=7, commit=2), ents(1, 3))
    w.save(HardState(term=2, vote=7, commit=5), ents(4, 5, term=2))
    w.save(None, [])  # no-op
    w.close()
    md, hs, es = read(d)
    assert md == META
    assert (hs.term, hs.vote, hs.commit) == (2, 7, 5)
    assert es == ents(1, 3) + ents(4, 5, term=2)


def test_empty_wal_reads_empty(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    WAL.create(str(d), META).close()
    md, hs, es = read(d)
    assert md == META and es == [] and hs == HardState()


def test_overlap_truncation(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META)
    w.save(HardState(term=1, commit=1), ents(1, 10))
    # a new leader overwrites the uncommitted suffix from index 4
    w.save(HardState(term=2, commit=4), ents(4, 6, term=2))
    w.close()
    _, hs, es = read(d)
    assert idx(es) == [1, 2, 3, 4, 5, 6]
    assert [e.Term for e in es] == [1, 1, 1, 2, 2, 2]
    assert hs.term == 2
    # overwrite again from index 2, after reopening
    w = WAL.open(str(d))
    w.read_all()
    w.save(None, ents(2, 2, term=3))
    w.close()
    _, _, es = read(d)
    assert idx(es) == [1, 2] and es[1].Term == 3


def test_reopen_and_append(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    WAL.create(str(d), META).close()
    for k in range(5):
        w = WAL.open(str(d))
        _, _, es = w.read_all()
        assert idx(es) == list(range(1, 3 * k + 1))
        assert w.last_index == 3 * k
        w.save(HardState(term=1, commit=3 * k + 3), ents(3 * k + 1, 3 * k + 3))
        w.close()
    _, hs, es = read(d)
    assert idx(es) == list(range(1, 16)) and hs.commit == 15


def test_must_read_before_append_and_lock(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    WAL.create(str(d), META).close()
    w = WAL.open(str(d))
    with pytest.raises(WALError):
        w.save(None, ents(1, 1))
    with pytest.raises(WALError):  # the segments are flocked by w
        WAL.open(str(d))
    w.read_all()
    w.save(None, ents(1, 1))
    w.close()
    w.close()  # idempotent
    with pytest.raises(WALError):
        w.save(None, ents(2, 2))


def test_save_unsynced_then_sync(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META)
    w.save(None, ents(1, 3), sync=False)
    w.sync()
    w.close()
    assert idx(read(d)[2]) == [1, 2, 3]


# --------------------------------------------------------------------------- segments


def test_segment_cut_and_crc_chain(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META, segment_size=2048)
    for b in range(20):
        w.save(HardState(term=1, vote=1, commit=b * 5 + 5), ents(b * 5 + 1, b * 5 + 5, size=64))
    w.close()
    segs = segments(d)
    assert len(segs) > 3
    # names: seq increments by one; index = first entry of the segment
    prev_crc = None
    last_entry = 0
    for seq, p in enumerate(segs):
        s, i = (int(x, 16) for x in p.name[:-4].split("-"))
        assert s == seq
        recs = [r for _, _, r in frames(p.read_bytes())]
        assert recs[0].type == CRC_TYPE
        if prev_crc is not None:
            assert recs[0].crc == prev_crc  # CRC chained from the previous segment
            assert recs[1].type == METADATA_TYPE and recs[1].data == META
            assert recs[2].type == STATE_TYPE  # the current HardState heads each new segment
            assert i == last_entry + 1
            assert p.stat().st_size >= 0
        entries = [Entry.FromString(r.data) for r in recs if r.type == ENTRY_TYPE]
        if entries:
            assert entries[0].Index == i or seq == 0
            last_entry = entries[-1].Index
        prev_crc = recs[-1].crc
        if p != segs[-1]:
            assert p.stat().st_size >= 2048
    _, hs, es = read(d)
    assert idx(es) == list(range(1, 101)) and hs.commit == 100
    # appends after reopen continue the chain in the tail segment
    w = WAL.open(str(d), segment_size=2048)
    w.read_all()
    w.save(None, ents(101, 140, size=64))
    w.close()
    assert idx(read(d)[2]) == list(range(1, 141))


def test_broken_crc_chain_between_segments(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META, segment_size=1024)
    for b in range(6):
        w.save(None, ents(b * 5 + 1, b * 5 + 5, size=64))
    w.close()
    segs = segments(d)
    assert len(segs) >= 3
    # rewrite segment 2's carried-over CRC; its own records stay self-consistent
    p = segs[2]
    buf = bytearray(p.read_bytes())
    off, flen, rec = frames(bytes(buf))[0]
    assert rec.type == CRC_TYPE
    buf[off : off + flen] = encode_frame(CRC_TYPE, rec.crc ^ 1, None)
    p.write_bytes(bytes(buf))
    with pytest.raises(CRCMismatchError) as ei:
        read(d)
    assert p.name in str(ei.value)


def test_missing_middle_segment(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META, segment_size=1024)
    for b in range(6):
        w.save(None, ents(b * 5 + 1, b * 5 + 5, size=64))
    w.close()
    segments(d)[1].unlink()
    with pytest.raises(CorruptWALError):
        read(d)


def test_release_lock_to_and_purge(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META, segment_size=512)
    for b in range(10):
        w.save(HardState(term=1, commit=b * 5 + 5), ents(b * 5 + 1, b * 5 + 5, size=64))
    n = len(segments(d))
    assert n >= 5
    assert purge(str(d), 1) == []  # all held
    w.save_snapshot(WalSnapshot(30, 1))
    w.release_lock_to(30)
    removed = purge(str(d), 1)
    assert removed  # the segments wholly before index 30
    starts = [int(p.name[17:33], 16) for p in segments(d)]
    assert starts[0] <= 30 and starts[1] > 30  # keeps the segment that holds 30
    w.save(None, ents(51, 52))
    w.close()
    _, _, es = read(d, WalSnapshot(30, 1))
    assert idx(es) == list(range(31, 53))
    with pytest.raises(SnapshotNotFoundError):  # the start of the log is gone
        read(d)


# --------------------------------------------------------------------------- snapshots


def test_snapshot_records(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META, segment_size=1024)
    w.save(HardState(term=1, commit=10), ents(1, 10, size=64))
    w.save_snapshot(WalSnapshot(5, 1, ConfState(voters=[0x1234])))
    w.save(HardState(term=2, commit=20), ents(11, 20, term=2, size=64))
    w.save_snapshot(WalSnapshot(15, 2))
    w.save(HardState(term=2, commit=22), ents(21, 25, term=2, size=64))
    w.close()
    assert len(segments(d)) > 1
    assert idx(read(d, WalSnapshot(5, 1))[2]) == list(range(6, 26))
    assert idx(read(d, WalSnapshot(15, 2))[2]) == list(range(16, 26))
    assert idx(read(d)[2]) == list(range(1, 26))
    with pytest.raises(SnapshotNotFoundError):
        read(d, WalSnapshot(7, 1))
    with pytest.raises(SnapshotMismatchError):
        read(d, WalSnapshot(5, 2))
    snaps = valid_snapshot_entries(str(d))
    assert [(s.index, s.term) for s in snaps] == [(0, 0), (5, 1), (15, 2)]
    assert snaps[1].conf_state is not None and list(snaps[1].conf_state.voters) == [0x1234]
    # after a failed read_all the files are released: the WAL can be reopened at once
    w = WAL.open(str(d), WalSnapshot(15, 2))
    w.read_all()
    w.close()


def test_metadata_conflict(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META, segment_size=512)
    w.save(None, ents(1, 10, size=64))
    w.close()
    segs = segments(d)
    assert len(segs) == 2
    first = frames(segs[0].read_bytes())
    prev = first[-1][2].crc
    other = encode_metadata(1, 2)
    segs[1].write_bytes(encode_frame(CRC_TYPE, prev, None) +
                        encode_frame(METADATA_TYPE, crc32c(other, prev), other))
    with pytest.raises(MetadataConflictError):
        read(d)


# --------------------------------------------------------------------------- torn tails


def _build(d: Path) -> list[tuple[int, int, record_pb2.Record]]:
    w = WAL.create(str(d), META)
    w.save(HardState(term=1, commit=3), ents(1, 3, size=40))
    w.save(HardState(term=1, commit=6), ents(4, 6, size=1200))  # spans whole sectors
    w.close()
    return frames(segments(d)[0].read_bytes())


def _expected_after_cut(fr: list[tuple[int, int, record_pb2.Record]], cut: int) -> list[int]:
    return [Entry.FromString(r.data).Index for off, flen, r in fr
            if r.type == ENTRY_TYPE and off + flen <= cut]


def test_torn_tail_truncated_at_many_offsets(tmp_path: Path) -> None:
    base = tmp_path / "base"
    fr = _build(base)
    seg_name = segments(base)[0].name
    size = segments(base)[0].stat().st_size
    header_end = fr[2][0] + fr[2][1]  # CRC, Metadata, Snapshot(0,0)
    cuts = sorted(set(range(header_end + 1, size, 7)) | {off + 3 for off, _, _ in fr[3:]})
    assert len(cuts) > 100
    for n, cut in enumerate(cuts):
        d = tmp_path / f"w{n}"
        shutil.copytree(base, d)
        with open(d / seg_name, "r+b") as f:
            f.truncate(cut)
        want = _expected_after_cut(fr, cut)
        on_boundary = any(off == cut for off, _, _ in fr)
        if on_boundary:
            assert idx(read(d)[2]) == want
            assert not repair(str(d))
        else:
            with pytest.raises(UnexpectedEOFError):
                read(d)
            assert repair(str(d))
            assert (d / (seg_name + ".broken")).stat().st_size == cut
            assert idx(read(d)[2]) == want, cut
        # appends continue after the repaired tail
        w = WAL.open(str(d))
        _, _, es = w.read_all()
        nxt = (es[-1].Index if es else 0) + 1
        w.save(HardState(term=2, commit=nxt), ents(nxt, nxt + 1, term=2))
        w.close()
        _, hs, es = read(d)
        assert idx(es) == want + [nxt, nxt + 1] and hs.commit == nxt


def test_torn_tail_zeroed_frames(tmp_path: Path) -> None:
    base = tmp_path / "base"
    fr = _build(base)
    seg_name = segments(base)[0].name
    last_off, last_len, _ = fr[-1]  # the final HardState
    big_off, big_len, big = fr[-2]  # entry 6 (~1200 bytes)
    assert Entry.FromString(big.data).Index == 6

    # (1) the whole last frame zeroed: its length word is 0 = end of data; no repair needed
    d = tmp_path / "a"
    shutil.copytree(base, d)
    with open(d / seg_name, "r+b") as f:
        f.seek(last_off)
        f.write(bytes(last_len))
    _, hs, es = read(d)
    assert idx(es) == [1, 2, 3, 4, 5, 6] and hs.commit == 3
    w = WAL.open(str(d))
    w.read_all()
    w.save(HardState(term=1, commit=7), ents(7, 7))
    w.close()
    assert idx(read(d)[2]) == list(range(1, 8))

    # (2) a whole sector inside entry 6 never written (zeros), the rest present: torn
    d = tmp_path / "b"
    shutil.copytree(base, d)
    sector = ((big_off + 8) // 512 + 1) * 512
    assert sector + 512 <= big_off + big_len
    with open(d / seg_name, "r+b") as f:
        f.seek(sector)
        f.write(bytes(512))
    with pytest.raises(UnexpectedEOFError):
        read(d)
    assert repair(str(d))
    _, _, es = read(d)
    assert idx(es) == [1, 2, 3, 4, 5]

    # (3) the body of the last frame zeroed but its length word intact: torn
    d = tmp_path / "c"
    shutil.copytree(base, d)
    with open(d / seg_name, "r+b") as f:
        f.seek(last_off + 8)
        f.write(bytes(last_len - 8))
    with pytest.raises(UnexpectedEOFError):
        read(d)
    assert repair(str(d))
    _, hs, es = read(d)
    assert idx(es) == [1, 2, 3, 4, 5, 6] and hs.commit == 3

    # (4) garbage (bad CRC) in the very last frame with nothing after it: torn
    d = tmp_path / "e"
    shutil.copytree(base, d)
    with open(d / seg_name, "r+b") as f:
        f.seek(last_off + last_len - 1 - 4)  # inside the HardState payload, before padding
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(UnexpectedEOFError):
        read(d)
    assert repair(str(d))
    assert idx(read(d)[2]) == [1, 2, 3, 4, 5, 6]


def test_zeroed_frame_followed_by_data(tmp_path: Path) -> None:
    """A frame (length word included) that never reached the disk while later sectors did:
    torn in the last segment (repair keeps a .broken copy), corruption in any other."""
    base = tmp_path / "base"
    fr = _build(base)
    seg_name = segments(base)[0].name
    off, flen, rec = fr[-3]  # entry 5, followed by entry 6 and the HardState
    assert Entry.FromString(rec.data).Index == 5
    d = tmp_path / "a"
    shutil.copytree(base, d)
    with open(d / seg_name, "r+b") as f:
        f.seek(off)
        f.write(bytes(flen))
    with pytest.raises(UnexpectedEOFError) as ei:
        read(d)
    assert ei.value.offset == off
    assert repair(str(d))
    assert (d / (seg_name + ".broken")).exists()
    assert idx(read(d)[2]) == [1, 2, 3, 4]

    d = tmp_path / "b"
    w = WAL.create(str(d), META, segment_size=1024)
    for b in range(8):
        w.save(None, ents(b * 4 + 1, b * 4 + 4, size=64))
    w.close()
    p = segments(d)[1]
    off, flen, _ = frames(p.read_bytes())[3]
    buf = bytearray(p.read_bytes())
    buf[off : off + flen] = bytes(flen)
    p.write_bytes(bytes(buf))
    with pytest.raises(CorruptWALError) as ei2:
        read(d)
    assert not isinstance(ei2.value, UnexpectedEOFError) and ei2.value.offset == off


# --------------------------------------------------------------------------- corruption


def test_flipped_byte_mid_log_is_corruption(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    fr = _build(d)
    p = segments(d)[0]
    off, flen, rec = fr[4]  # entry 2, followed by many valid records
    assert rec.type == ENTRY_TYPE
    buf = bytearray(p.read_bytes())
    buf[off + flen - 12] ^= 0x40  # inside the entry payload
    p.write_bytes(bytes(buf))
    before = p.read_bytes()
    with pytest.raises(CorruptWALError) as ei:
        read(d)
    assert not isinstance(ei.value, UnexpectedEOFError)
    assert isinstance(ei.value, CRCMismatchError)
    assert ei.value.offset == off and ei.value.path == str(p)
    assert f"offset {off}" in str(ei.value) and p.name in str(ei.value)
    # repair refuses, and nothing is touched
    with pytest.raises(CorruptWALError):
        repair(str(d))
    assert p.read_bytes() == before
    assert not (d / (p.name + ".broken")).exists()


def test_garbage_length_word_mid_log_is_corruption(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    fr = _build(d)
    p = segments(d)[0]
    off = fr[5][0]
    buf = bytearray(p.read_bytes())
    buf[off + 7] = 0x55  # impossible padding byte
    p.write_bytes(bytes(buf))
    with pytest.raises(CorruptWALError) as ei:
        read(d)
    assert not isinstance(ei.value, UnexpectedEOFError) and ei.value.offset == off


def test_corrupt_non_last_segment(tmp_path: Path) -> None:
    for mode in ("flip", "truncate", "zero-tail-sector"):
        d = tmp_path / mode
        w = WAL.create(str(d), META, segment_size=1024)
        for b in range(8):
            w.save(HardState(term=1, commit=b * 4 + 4), ents(b * 4 + 1, b * 4 + 4, size=64))
        w.close()
        segs = segments(d)
        assert len(segs) >= 3
        p = segs[1]
        fr = frames(p.read_bytes())
        off, flen, _ = fr[-1]  # the very last frame of a non-last segment
        buf = bytearray(p.read_bytes())
        if mode == "flip":
            buf[off + 10] ^= 0x01
        elif mode == "truncate":
            del buf[off + flen - 9 :]
        else:
            buf[off + 8 :] = bytes(len(buf) - off - 8)
        p.write_bytes(bytes(buf))
        before = {q.name: q.read_bytes() for q in segments(d)}
        with pytest.raises(CorruptWALError) as ei:
            read(d)
        assert not isinstance(ei.value, UnexpectedEOFError), mode
        assert p.name in str(ei.value) or mode == "zero-tail-sector"
        # repair only ever looks at the last segment, which is fine: nothing to do, nothing touched
        assert not repair(str(d))
        assert {q.name: q.read_bytes() for q in segments(d)} == before


def test_names() -> None:
    assert wal_name(1, 0x2A) == "0000000000000001-000000000000002a.wal"
