"""conch.client: a Python client for etcd v3 servers (conch or etcd).

``Client`` is blocking, ``AsyncClient`` the same API on asyncio; both share the sans-IO
protocol logic of ``conch.client._protocol``. See docs/design/client.md.
"""

from conch.client._protocol import (
    Alarm,
    Call,
    Compare,
    DeleteResult,
    Event,
    GetResult,
    HashKV,
    Header,
    KeyValue,
    Lease,
    LeaseTTL,
    Member,
    MemberListResult,
    Op,
    PutResult,
    Status,
    TxnResult,
    WatchResult,
    prefix_end,
)
from conch.client.aio import AsyncClient, AsyncKeepAlive, AsyncWatch
from conch.client.errors import ClientError, Compacted
from conch.client.sync import Client, KeepAlive, Watch

__all__ = [
    "Alarm", "AsyncClient", "AsyncKeepAlive", "AsyncWatch", "Call", "Client", "ClientError",
    "Compacted", "Compare", "DeleteResult", "Event", "GetResult", "HashKV", "Header",
    "KeepAlive", "KeyValue", "Lease", "LeaseTTL", "Member", "MemberListResult", "Op",
    "PutResult", "Status", "TxnResult", "Watch", "WatchResult", "prefix_end",
]  # fmt: skip
