"""The backend: one LMDB environment holding etcd's buckets (`backend.py`), and the schema
that names every bucket and meta key (`schema.py`)."""

from conch.backend.backend import DEFAULT_MAP_SIZE, Backend
from conch.backend.schema import BUCKETS, META_CONSISTENT_INDEX, META_TERM

__all__ = ["BUCKETS", "DEFAULT_MAP_SIZE", "META_CONSISTENT_INDEX", "META_TERM", "Backend"]
