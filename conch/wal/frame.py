"""etcd WAL framing: record encoding, frames, rolling CRC-32C and segment scanning.

A frame is::

    8-byte little-endian length word | marshalled walpb.Record | zero padding to 8 bytes

The low 56 bits of the length word hold the record length; when there is padding the top byte is
``0x80 | padBytes``.  ``walpb.Record`` is ``{type=1 int64, crc=2 uint32, data=3 bytes}`` (proto2).
The ``crc`` field is the CRC-32C (Castagnoli) of the ``data`` of every record written so far,
rolling across segments; ``CrcType`` records carry the running value at the end of the previous
segment and are not themselves checked against it by the decoder (``scan_segment`` does that
separately, as etcd's ``ReadAll`` does).

``walpb.Record`` is encoded and decoded by hand here rather than through ``record_pb2``: it is a
three-field message on the hot path, and building a protobuf object per record costs more than
the encoding itself.  ``tests/wal/test_wal.py`` checks the bytes against ``record_pb2``.
The encoding matches etcd's (gogoproto, proto2): fields in number order, ``type`` and ``crc``
always present, ``data`` present iff the record has data (``CrcType`` records have none).

This module needs only bytes; it does not import the generated protobuf modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crc32c import crc32c

from conch.wal.errors import CorruptWALError, CRCMismatchError, UnexpectedEOFError, WALError

METADATA_TYPE = 1
ENTRY_TYPE = 2
STATE_TYPE = 3
CRC_TYPE = 4
SNAPSHOT_TYPE = 5

FRAME_SIZE_BYTES = 8
MIN_SECTOR_SIZE = 512

_LEN_MASK = (1 << 56) - 1
_ZEROS = tuple(bytes(n) for n in range(8))
_UINT64 = 1 << 64


def crc_update(crc: int, data: bytes) -> int:
    """Continue the rolling CRC-32C ``crc`` over ``data`` (etcd's ``crc.New(prev, castagnoli)``)."""
    return crc32c(data, crc)


def _uvarint(v: int) -> bytes:
    if v < 0x80:
        return bytes((v,))
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def encode_frame_size(n: int) -> tuple[int, int]:
    """Length word and padding for a record of ``n`` bytes (etcd ``encodeFrameSize``)."""
    pad = -n & 7
    word = n
    if pad:
        word |= (0x80 | pad) << 56
    return word, pad


def decode_frame_size(word: int) -> tuple[int, int]:
    """Record length and padding from a length word (etcd ``decodeFrameSize``)."""
    rec = word & _LEN_MASK
    pad = (word >> 56) & 0x7 if word & (1 << 63) else 0
    return rec, pad


def record_prefix(rtype: int, crc: int, data_len: int | None) -> bytes:
    """Marshalled walpb.Record up to (not including) the data bytes."""
    head = b"\x08" + _uvarint(rtype & (_UINT64 - 1)) + b"\x10" + _uvarint(crc)
    if data_len is None:
        return head
    return head + b"\x1a" + _uvarint(data_len)


def encode_record(rtype: int, crc: int, data: bytes | None) -> bytes:
    """Marshal a walpb.Record."""
    if data is None:
        return record_prefix(rtype, crc, None)
    return record_prefix(rtype, crc, len(data)) + data


def append_frame(parts: list[bytes], rtype: int, crc: int, data: bytes | None) -> int:
    """Append one frame's pieces to ``parts`` (to be ``b"".join``-ed); return its size."""
    if data is None:
        prefix = record_prefix(rtype, crc, None)
        n = len(prefix)
    else:
        prefix = record_prefix(rtype, crc, len(data))
        n = len(prefix) + len(data)
    word, pad = encode_frame_size(n)
    parts.append(word.to_bytes(8, "little") + prefix)
    if data is not None:
        parts.append(data)
    if pad:
        parts.append(_ZEROS[pad])
    return 8 + n + pad


def encode_frame(rtype: int, crc: int, data: bytes | None) -> bytes:
    """One complete frame: length word, record, padding."""
    parts: list[bytes] = []
    append_frame(parts, rtype, crc, data)
    return b"".join(parts)


class _Malformed(ValueError):
    pass


def _read_uvarint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >= _UINT64:
                raise _Malformed("varint overflows 64 bits")
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("varint too long")


def decode_record(buf: bytes, start: int, end: int) -> tuple[int, int, bytes]:
    """Parse a walpb.Record from ``buf[start:end]``; return (type, crc, data).

    Unknown fields are skipped as protobuf requires; malformed input raises ``ValueError``.
    """
    rtype = 0
    crc = 0
    data = b""
    pos = start
    while pos < end:
        key, pos = _read_uvarint(buf, pos, end)
        fnum = key >> 3
        wt = key & 7
        if fnum == 0:
            raise _Malformed("field number 0")
        if wt == 0:
            v, pos = _read_uvarint(buf, pos, end)
            if fnum == 1:
                rtype = v - _UINT64 if v >= 1 << 63 else v
            elif fnum == 2:
                if v > 0xFFFFFFFF:
                    raise _Malformed("crc does not fit uint32")
                crc = v
        elif wt == 2:
            n, pos = _read_uvarint(buf, pos, end)
            if pos + n > end:
                raise _Malformed("truncated length-delimited field")
            if fnum == 3:
                data = buf[pos:pos + n]
            elif fnum in (1, 2):
                raise _Malformed(f"field {fnum} has wire type 2")
            pos += n
        elif wt == 1:
            if fnum in (1, 2, 3):
                raise _Malformed(f"field {fnum} has wire type 1")
            pos += 8
        elif wt == 5:
            if fnum in (1, 2, 3):
                raise _Malformed(f"field {fnum} has wire type 5")
            pos += 4
        else:
            raise _Malformed(f"unsupported wire type {wt}")
        if pos > end:
            raise _Malformed("truncated field")
    return rtype, crc, data


@dataclass
class SegmentScan:
    """Result of scanning one segment file.

    ``records`` holds (type, data, frame offset) of every valid record, in order, CRC records
    included.
    ``valid_end`` is the offset just past the last valid frame (where a repair truncates).
    ``error`` is set when the scan stopped at a bad frame instead of at end of data.
    """

    records: list[tuple[int, bytes, int]] = field(default_factory=list)
    crc: int = 0
    valid_end: int = 0
    error: WALError | None = None


def _all_zero(buf: bytes, start: int, end: int) -> bool:
    return buf.count(0, start, end) == end - start


def _has_zero_sector(buf: bytes, start: int, end: int) -> bool:
    """True if a whole (file-aligned, EOF-clipped) 512-byte sector overlapping
    ``buf[start:end]`` is all zeros: the signature of a sector that never reached the disk."""
    size = len(buf)
    s = (start // MIN_SECTOR_SIZE) * MIN_SECTOR_SIZE
    while s < end and s < size:
        e = min(s + MIN_SECTOR_SIZE, size)
        if _all_zero(buf, s, e):
            return True
        s += MIN_SECTOR_SIZE
    return False


def scan_segment(buf: bytes, path: str, crc: int, is_last: bool) -> SegmentScan:
    """Decode every frame of one segment's bytes, continuing the rolling CRC from ``crc``.

    Ends at EOF or at a zero length word (preallocated / never written space) followed only by
    zeros.  A bad frame sets ``error``:

    * in the last segment, a *torn tail* gives :class:`UnexpectedEOFError`: the file ends
      inside the frame (including inside its length word), or the frame does not decode / fails
      its CRC and either one of its sectors is entirely zero (a sector that was never written,
      etcd's ``isTornEntry``) or nothing but zeros follows it, or a zero length word is followed
      by non-zero bytes (etcd silently zeroes these; we report them so ``repair`` keeps a copy);
    * anything else -- a bad frame followed by more data, a length word with an impossible
      padding byte, any bad frame in a non-last segment, a CrcType record that does not match the
      previous segment's CRC -- gives :class:`CorruptWALError` / :class:`CRCMismatchError`.
    """
    res = SegmentScan(crc=crc)
    records = res.records
    size = len(buf)
    off = 0
    while True:
        if off >= size:
            break
        if off + FRAME_SIZE_BYTES > size:
            if _all_zero(buf, off, size):
                break
            res.error = _bad(path, off, is_last, True, "file ends inside a length word")
            break
        word = int.from_bytes(buf[off:off + 8], "little")
        if word == 0:
            # End of data (preallocated or never-written space) -- unless non-zero bytes follow:
            # then a frame's sector never reached the disk while later ones did (torn write).
            if not _all_zero(buf, off, size):
                res.error = _bad(path, off, is_last, True,
                                 "zero length word followed by non-zero data")
            break
        top = word >> 56
        if top and (top & 0x78 or not top & 0x80):
            res.error = CorruptWALError(path, off, f"invalid length word 0x{word:016x}")
            break
        rec_len, pad = decode_frame_size(word)
        start = off + FRAME_SIZE_BYTES
        end = start + rec_len + pad
        if end > size:
            res.error = _bad(path, off, is_last, True,
                             f"frame of {rec_len + pad} bytes extends past end of file "
                             f"({size} bytes)")
            break
        try:
            rtype, rcrc, data = decode_record(buf, start, start + rec_len)
        except ValueError as exc:
            torn = _has_zero_sector(buf, start, end) or _all_zero(buf, end, size)
            res.error = _bad(path, off, is_last, torn, f"undecodable record: {exc}")
            break
        if rtype == CRC_TYPE:
            if crc != 0 and rcrc != crc:
                res.error = CRCMismatchError(
                    path, off, f"segment starts with CRC 0x{rcrc:08x} but the previous "
                    f"segment ended with 0x{crc:08x}")
                break
            crc = rcrc
        else:
            ncrc = crc32c(data, crc)
            if ncrc != rcrc:
                torn = _has_zero_sector(buf, start, end) or _all_zero(buf, end, size)
                if is_last and torn:
                    res.error = UnexpectedEOFError(path, off, "torn record (CRC mismatch)")
                else:
                    res.error = CRCMismatchError(
                        path, off, f"CRC mismatch: record has 0x{rcrc:08x}, computed "
                        f"0x{ncrc:08x}")
                break
            crc = ncrc
        records.append((rtype, data, off))
        off = end
    res.crc = crc
    res.valid_end = off
    return res


def _bad(path: str, off: int, is_last: bool, torn: bool, reason: str) -> WALError:
    if is_last and torn:
        return UnexpectedEOFError(path, off, reason)
    return CorruptWALError(path, off, reason)
