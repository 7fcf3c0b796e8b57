"""conch.transport: member-to-member raft traffic (etcd's rafthttp behaviour, our own wire).

Pieces
------
- ``wire`` (sans-IO): frames (u32 length + u8 type + payload), the connection handshake and its
  validation (``check_handshake``), snapshot trailer/ack, an incremental ``FrameDecoder``.
- ``peer`` (sans-IO): ``OutQueue`` (framed messages joined into one write), ``PeerLink``
  (queue or drop, given link state and time), ``Backoff`` (redial delay).
- ``transport``: the thin asyncio driver, ``Transport``.

API
---
::

    t = Transport(member_id=..., cluster_id=..., listen_urls=["http://127.0.0.1:2380"],
                  snap_dir=".../member/snap",
                  on_message=lambda m: ...,            # conch.raft.Message, decoded
                  on_snapshot=async (header, path) -> None,
                  on_unreachable=lambda peer_id: ...,
                  logger=None, unreachable_after=0.5, ...)
    await t.start()                      # listen on the peer URLs (http://host:port, no TLS yet)
    t.add_peer(id, urls); t.update_peer(id, urls); t.remove_peer(id)
    t.send(rd.messages)                  # never blocks or awaits; call on the event loop
    ok = await t.send_snapshot(peer_id, msg_snap, "/path/to/db")   # then raft.report_snapshot
    t.active_since(peer_id) -> float | None   # time.monotonic() when our stream came up
    t.listen_urls                        # bound URLs (port 0 resolved)
    t.stats() -> {metric name: {peer id hex: count}}
    await t.stop()

Contract
--------
- ``on_message(m)`` runs on the event loop, synchronously from the socket callback, in arrival
  order per peer. It must not block (the member steps raft or queues the message).
- ``send`` accepts ``conch.raft.Message`` (encoded here with ``conch.raft.codec``) or
  ``raftpb.Message`` and routes by ``m.to``. Per peer there is one outbound TCP stream; all
  messages queued during one loop iteration leave in one ``write`` (one syscall). Messages are
  queued while the stream is up, and for ``unreachable_after`` seconds after it went down (or
  after the peer was added); beyond that, or when the queue is full (4096 messages, as etcd's
  stream buffer, or 64 MiB), they are dropped and ``on_unreachable(peer)`` is called once per
  ``send`` call, as etcd reports ``ReportUnreachable`` on drops. The loss of an established
  stream is reported the same way. Raft tolerates loss, duplication and reordering.
- Redial: exponential backoff 50 ms doubling to 1 s, reset after an accepted handshake; the
  peer's URLs are tried in turn on dial failures.
- MsgSnap carrying a database file goes through ``send_snapshot`` (separate connection:
  handshake, MsgSnap header, 1 MiB chunks, size + SHA-256 trailer, ack). The receiver writes
  ``<snap_dir>/<index:016x>.snap.db`` (temp file, hash checked, fsync, rename, dir fsync), awaits
  ``on_snapshot(SnapshotHeader(from_id, message, size, sha256), path)`` and only then acks, so
  ``send_snapshot`` returns True once the receiving member has the message. The member owns the
  file from then on. A MsgSnap given to ``send`` travels on the stream like any message.
- Handshake: {protocol version, kind (stream/snapshot), cluster id, from id, to id}. The
  listener refuses a different cluster id, a to-id that is not its own, a removed member or a
  member it does not know (``add_peer``), and a non-conch client; both sides log the reason
  (e.g. ``rejected connection from member 8e9e05c52164694d: cluster ID mismatch (local
  cdf818194e3a8c32, remote 1234)``). Repeated identical failures are logged at debug level.
- Inbound connections only read. A new stream from a peer replaces (closes) its older one.

Performance notes (tests/transport/test_throughput.py, one process, both ends on one loop):
~95k MsgApp/s end to end for 160-byte messages, of which the raftpb codec (``message_to_pb`` +
``message_from_pb``) is about 60% of the CPU; framing + socket I/O alone moves ~1M frames/s.
The receive side uses an ``asyncio.Protocol`` (messages delivered synchronously from
``data_received``, no task per connection); a StreamReader variant measured the same within
noise (~1.1-1.3M frames/s either way), so the choice was made for simplicity of ordering, not
speed. Snapshot transfer: ~190 MiB/s including hashing and fsync.

Counters (``stats()``): ``etcd_network_peer_sent_bytes_total``,
``etcd_network_peer_received_bytes_total``, ``etcd_network_peer_sent_failures_total`` (dropped
messages), ``conch_network_peer_{sent,received}_messages_total``,
``etcd_network_snapshot_{send,receive}_{success,failures}``, ``conch_network_peer_active``.
"""

from conch.transport.transport import SnapshotHeader, Transport, fetch_members, parse_peer_url

__all__ = ["SnapshotHeader", "Transport", "fetch_members", "parse_peer_url"]
