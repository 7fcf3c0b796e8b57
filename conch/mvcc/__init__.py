"""Multi-version KV store (etcd's server/storage/mvcc) on LMDB."""

from conch.mvcc.kvstore import KVStore, KVWrite, LeaseHooks, NoLeases
from conch.mvcc.txn import (
    DEFAULT_MAX_TXN_OPS,
    check_delete_range,
    check_put,
    check_range,
    check_txn,
    is_txn_readonly,
)

__all__ = [
    "DEFAULT_MAX_TXN_OPS",
    "KVStore",
    "KVWrite",
    "LeaseHooks",
    "NoLeases",
    "check_delete_range",
    "check_put",
    "check_range",
    "check_txn",
    "is_txn_readonly",
]
