"""The peer wire format, sans-IO: frames, the handshake and its validation, snapshot trailers.

Every byte on a peer connection is a *frame*: a 5-byte header (payload length as big-endian
u32, frame type as u8) followed by the payload. A connection starts with one HANDSHAKE frame
from the dialer; the listener answers with one HANDSHAKE_REPLY and, if it refused, closes.

- stream connection (kind STREAM): then only MESSAGE frames from dialer to listener, each a
  serialized ``raftpb.Message``. The listener never writes after its reply.
- snapshot connection (kind SNAPSHOT): SNAP_HEADER (the serialized MsgSnap ``raftpb.Message``),
  any number of SNAP_CHUNK frames (the file's bytes in order), SNAP_TRAILER (file size u64 +
  SHA-256 of the file), then the listener answers with SNAP_ACK (status u8 + reason text).

Nothing here touches sockets or clocks: the classes take bytes and return bytes/values, so the
asyncio driver (``conch.transport.transport``) and the tests share them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

PROTOCOL_VERSION = 1
MAGIC = b"cnch"

HEADER = struct.Struct(">IB")
HEADER_SIZE = HEADER.size

#: etcd's message decoder refuses messages above 512 MiB; so do we.
MAX_FRAME = 512 * 1024 * 1024
#: a handshake frame is tiny; anything bigger is not a conch peer (e.g. an HTTP request line).
MAX_HANDSHAKE_FRAME = 256


class FrameType(enum.IntEnum):
    HANDSHAKE = 1
    HANDSHAKE_REPLY = 2
    MESSAGE = 3
    SNAP_HEADER = 4
    SNAP_CHUNK = 5
    SNAP_TRAILER = 6
    SNAP_ACK = 7
    MEMBERS = 8


class ConnKind(enum.IntEnum):
    STREAM = 1
    SNAPSHOT = 2
    #: a member joining an existing cluster asks for the cluster ID and the member list
    #: (etcd's GET /members on the peer URL); the listener answers with one MEMBERS frame.
    MEMBERS = 3


class WireError(Exception):
    """The bytes on a connection do not follow the protocol; the connection must be closed."""


def frame(ftype: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), ftype) + payload


def message_frame_header(payload_len: int) -> bytes:
    """Header of a MESSAGE frame; the sender appends header and payload to one write batch."""
    return HEADER.pack(payload_len, FrameType.MESSAGE)


class FrameDecoder:
    """Incremental frame parser: ``feed(bytes)`` returns every complete ``(type, payload)``.

    ``max_frame`` can be changed between feeds (the listener lowers it to
    ``MAX_HANDSHAKE_FRAME`` until the handshake is done, so garbage is refused at once instead
    of waiting for a gigabyte that will never come).
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(src)
        unpack = HEADER.unpack_from
        limit = self.max_frame
        while end - pos >= HEADER_SIZE:
            n, t = unpack(src, pos)
            if n > limit:
                raise WireError(f"frame of {n} bytes exceeds the limit of {limit}")
            stop = pos + HEADER_SIZE + n
            if stop > end:
                break
            out.append((t, bytes(src[pos + HEADER_SIZE:stop])))
            pos = stop
        if src is buf:
            del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return out


# --- handshake --------------------------------------------------------------------------------

_HANDSHAKE = struct.Struct(">4sHBQQQ")
_REPLY = struct.Struct(">BQQ")


class Status(enum.IntEnum):
    OK = 0
    CLUSTER_MISMATCH = 1
    MEMBER_MISMATCH = 2
    VERSION_MISMATCH = 3
    REMOVED = 4
    UNKNOWN_MEMBER = 5
    BAD_HANDSHAKE = 6


@dataclass(frozen=True, slots=True)
class Handshake:
    kind: int
    cluster_id: int
    from_id: int
    to_id: int
    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return frame(FrameType.HANDSHAKE, _HANDSHAKE.pack(
            MAGIC, self.version, self.kind, self.cluster_id, self.from_id, self.to_id))

    @staticmethod
    def decode(ftype: int, payload: bytes) -> Handshake:
        if ftype != FrameType.HANDSHAKE or len(payload) < _HANDSHAKE.size:
            raise WireError("not a conch peer handshake")
        magic, version, kind, cluster, frm, to = _HANDSHAKE.unpack_from(payload)
        if magic != MAGIC:
            raise WireError("not a conch peer handshake")
        return Handshake(kind, cluster, frm, to, version)


@dataclass(frozen=True, slots=True)
class HandshakeReply:
    """The listener's answer. ``cluster_id``/``member_id`` are the *listener's* own ids, so the
    dialer can log both sides of a mismatch."""

    status: int
    cluster_id: int
    member_id: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def encode(self) -> bytes:
        return frame(FrameType.HANDSHAKE_REPLY,
                     _REPLY.pack(self.status, self.cluster_id, self.member_id)
                     + self.reason.encode())

    @staticmethod
    def decode(ftype: int, payload: bytes) -> HandshakeReply:
        if ftype != FrameType.HANDSHAKE_REPLY or len(payload) < _REPLY.size:
            raise WireError("peer did not answer with a conch handshake reply")
        status, cluster, member = _REPLY.unpack_from(payload)
        return HandshakeReply(status, cluster, member,
                              payload[_REPLY.size:].decode(errors="replace"))


def check_handshake(hs: Handshake, *, cluster_id: int, member_id: int,
                    is_removed: bool = False, is_known: bool = True) -> HandshakeReply:
    """Decide whether to accept a dialer; the reason text is what both sides log."""
    def reply(status: Status, reason: str) -> HandshakeReply:
        return HandshakeReply(status, cluster_id, member_id, reason)

    if hs.version != PROTOCOL_VERSION:
        return reply(Status.VERSION_MISMATCH,
                     f"protocol version mismatch (local {PROTOCOL_VERSION}, remote {hs.version})")
    if hs.kind not in (ConnKind.STREAM, ConnKind.SNAPSHOT, ConnKind.MEMBERS):
        return reply(Status.BAD_HANDSHAKE, f"unknown connection kind {hs.kind}")
    if hs.kind == ConnKind.MEMBERS:
        return reply(Status.OK, "")  # the asker cannot know the IDs yet; nothing is trusted
    if hs.cluster_id != cluster_id:
        return reply(Status.CLUSTER_MISMATCH,
                     f"cluster ID mismatch (local {cluster_id:x}, remote {hs.cluster_id:x})")
    if hs.to_id != member_id:
        return reply(Status.MEMBER_MISMATCH,
                     f"destination member ID mismatch (local {member_id:x},"
                     f" remote wants {hs.to_id:x})")
    if is_removed:
        return reply(Status.REMOVED, f"member {hs.from_id:x} was removed from the cluster")
    if not is_known:
        return reply(Status.UNKNOWN_MEMBER, f"member {hs.from_id:x} is not a known peer")
    return reply(Status.OK, "")


# --- snapshot ---------------------------------------------------------------------------------

_TRAILER = struct.Struct(">Q32s")
_ACK = struct.Struct(">B")


@dataclass(frozen=True, slots=True)
class SnapTrailer:
    size: int
    sha256: bytes

    def encode(self) -> bytes:
        return frame(FrameType.SNAP_TRAILER, _TRAILER.pack(self.size, self.sha256))

    @staticmethod
    def decode(payload: bytes) -> SnapTrailer:
        if len(payload) != _TRAILER.size:
            raise WireError("malformed snapshot trailer")
        size, digest = _TRAILER.unpack(payload)
        return SnapTrailer(size, digest)


@dataclass(frozen=True, slots=True)
class SnapAck:
    ok: bool
    reason: str = ""

    def encode(self) -> bytes:
        return frame(FrameType.SNAP_ACK, _ACK.pack(0 if self.ok else 1) + self.reason.encode())

    @staticmethod
    def decode(ftype: int, payload: bytes) -> SnapAck:
        if ftype != FrameType.SNAP_ACK or len(payload) < 1:
            raise WireError("peer did not answer with a snapshot ack")
        return SnapAck(payload[0] == 0, payload[1:].decode(errors="replace"))


class SnapEvent(enum.Enum):
    HEADER = 1
    CHUNK = 2
    TRAILER = 3


class SnapshotReceiverState:
    """Order checker for the frames of a snapshot connection (after the handshake):
    exactly one SNAP_HEADER, SNAP_CHUNKs, one SNAP_TRAILER, nothing after."""

    __slots__ = ("stage", "received")

    def __init__(self) -> None:
        self.stage = 0  # 0: want header, 1: chunks or trailer, 2: done
        self.received = 0

    def on_frame(self, ftype: int, payload: bytes) -> SnapEvent:
        if self.stage == 0:
            if ftype != FrameType.SNAP_HEADER:
                raise WireError(f"expected a snapshot header, got frame type {ftype}")
            self.stage = 1
            return SnapEvent.HEADER
        if self.stage == 1:
            if ftype == FrameType.SNAP_CHUNK:
                self.received += len(payload)
                return SnapEvent.CHUNK
            if ftype == FrameType.SNAP_TRAILER:
                self.stage = 2
                return SnapEvent.TRAILER
            raise WireError(f"unexpected frame type {ftype} in a snapshot body")
        raise WireError("data after the snapshot trailer")
