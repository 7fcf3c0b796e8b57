"""Every bucket and meta key of the backend, in one place (etcd's `server/storage/schema`).

Bucket names are etcd's bbolt bucket names, plus `index` and `latest`, which hold on disk
what etcd keeps in its in-memory key index. A module that reads or writes the backend names
its bucket and key from here, never from a literal, so the on-disk layout can be read off this
page.
"""

from __future__ import annotations

# --- buckets -------------------------------------------------------------------------------
KEY = b"key"  # mvcc: revision -> KeyValue (etcd's `key` bucket)
INDEX = b"index"  # mvcc: user key + revision -> put/tombstone mark (etcd: in-memory treeIndex)
LATEST = b"latest"  # mvcc: user key -> newest revision of a live key
META = b"meta"  # consistent index, term, revisions (keys below)
LEASE = b"lease"  # lease id -> leasepb.Lease
ALARM = b"alarm"  # AlarmMember -> empty
CLUSTER = b"cluster"  # cluster-wide attributes (cluster version)
MEMBERS = b"members"  # member id -> etcd's member JSON
MEMBERS_REMOVED = b"members_removed"  # removed member id -> empty (may never return)
AUTH = b"auth"
AUTH_USERS = b"authUsers"
AUTH_ROLES = b"authRoles"

BUCKETS = (
    KEY,
    INDEX,
    LATEST,
    META,
    LEASE,
    ALARM,
    CLUSTER,
    MEMBERS,
    MEMBERS_REMOVED,
    AUTH,
    AUTH_USERS,
    AUTH_ROLES,
)

# --- keys of the meta bucket -----------------------------------------------------------------
#: the raft index of the last applied entry, committed with the data it produced (u64 BE)
META_CONSISTENT_INDEX = b"consistent_index"
#: the raft term of that entry (u64 BE)
META_TERM = b"term"
#: the store's current revision (u64 BE; conch only: etcd derives it from the key bucket)
META_CURRENT_REV = b"conch_current_rev"
#: compaction progress, etcd's names and encoding
META_SCHEDULED_COMPACT = b"scheduledCompactRev"
META_FINISHED_COMPACT = b"finishedCompactRev"
#: + "%016x" % raft index: the reason a conf change was rejected at apply time, kept so that
#: a replay after a restart rejects it again without validating against a newer membership
META_REJECTED_CONF_CHANGE_PREFIX = b"conch_rejected_conf_change/"
