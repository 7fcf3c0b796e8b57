"""On-disk key encodings of the MVCC store.

`key` bucket (etcd's layout, byte for byte): 8-byte big-endian main revision, `_`, 8-byte
big-endian sub revision; tombstones append `t`. LMDB orders these exactly as bbolt does
(memcmp, shorter first), so the bucket iterates in revision order.

`index` DB: ``escape(user key) + TERM + BE(main) + BE(sub)`` -> ``b"t"`` (tombstone) or
``b"p"`` (put). ``escape`` doubles every 0x00 as ``00 ff`` and ``TERM`` is ``00 01``; the
encoding is order-preserving and prefix-free, so all revisions of one key are contiguous,
keys sort in byte order, and the last 16 bytes of an index key are always the revision.

`latest` DB: raw user key -> marshalled current KeyValue of a live key.
"""

from __future__ import annotations

import struct

REV_LEN = 17
TOMBSTONE_MARK = b"t"
IDX_PUT = b"p"
IDX_TOMBSTONE = b"t"
TERM = b"\x00\x01"

_REV = struct.Struct(">QcQ")
_MAIN = struct.Struct(">Q")
_IDXREV = struct.Struct(">QQ")

# LMDB's compiled-in maximum key size (py-lmdb builds with the default 511).
LMDB_MAX_KEY = 511
# Longest escaped user key whose index entry still fits: escaped + TERM + 16 <= 511.
MAX_ESCAPED_KEY = LMDB_MAX_KEY - len(TERM) - 16

MAX_U64 = (1 << 64) - 1
IDX_REV_MAX = b"\xff" * 16


def rev_key(main: int, sub: int) -> bytes:
    return _REV.pack(main, b"_", sub)


def tomb_key(main: int, sub: int) -> bytes:
    return _REV.pack(main, b"_", sub) + TOMBSTONE_MARK


def parse_rev_key(k: bytes) -> tuple[int, int, bool]:
    main, _, sub = _REV.unpack_from(k)
    return main, sub, len(k) == REV_LEN + 1 and k[REV_LEN] == 0x74


def main_prefix(main: int) -> bytes:
    """Smallest `key` bucket key with this main revision."""
    return _MAIN.pack(main)


def rev_main(k: bytes) -> int:
    return int(_MAIN.unpack_from(k)[0])


def escape(key: bytes) -> bytes:
    """Order-preserving, prefix-free encoding of a user key (TERM included)."""
    if b"\x00" in key:
        return key.replace(b"\x00", b"\x00\xff") + TERM
    return key + TERM


def unescape(prefix: bytes) -> bytes:
    """Inverse of `escape` (argument includes TERM)."""
    body = prefix[:-2]
    if b"\x00" in body:
        return body.replace(b"\x00\xff", b"\x00")
    return body


def idx_key(ekey: bytes, main: int, sub: int) -> bytes:
    return ekey + _IDXREV.pack(main, sub)


def idx_rev(ik: bytes) -> tuple[int, int]:
    main, sub = _IDXREV.unpack_from(ik, len(ik) - 16)
    return int(main), int(sub)


def idx_to_rev_key(ik: bytes, tombstone: bool) -> bytes:
    """The `key` bucket key for an index entry."""
    r = ik[-16:-8] + b"_" + ik[-8:]
    return r + TOMBSTONE_MARK if tombstone else r


def rev_bytes_meta(main: int) -> bytes:
    """etcd's meta encoding of a compact revision: revToBytes(revision{main: rev})."""
    return _REV.pack(main, b"_", 0)


def key_fits(key: bytes) -> bool:
    """Whether a user key can be stored (LMDB key-size limit on the index entry)."""
    n = len(key) + key.count(b"\x00")
    return n <= MAX_ESCAPED_KEY


def kv_key_from_bytes(v: bytes) -> bytes:
    """The `key` field of a marshalled KeyValue, without a full parse.

    conch and etcd both marshal field 1 first; fall back to a full parse otherwise."""
    if v and v[0] == 0x0A:
        n = 0
        shift = 0
        i = 1
        while True:
            b = v[i]
            n |= (b & 0x7F) << shift
            i += 1
            if b < 0x80:
                break
            shift += 7
        return v[i : i + n]
    from conch.proto.mvccpb.kv_pb2 import KeyValue

    return KeyValue.FromString(v).key
