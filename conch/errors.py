"""etcd's server errors: a status code plus the exact message string.

Go clientv3 maps errors back by their exact description (rpctypes.errStringToError),
so the message strings are part of the wire contract. Raise these anywhere in the
server; the API layer (`conch.api.errors`) holds the one table that turns a `Code` into a
gRPC status (and, for the JSON gateway, an HTTP status). Nothing here imports grpc: the
store, the lessor and the server speak only `Code`.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Status classes of etcd's errors. The values are the gRPC status code numbers (a wire
    fact, not an import), so the API layer's table is a plain lookup."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class EtcdError(Exception):
    """An error with etcd's status code and exact message."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, EtcdError)
            and other.code == self.code
            and other.message == self.message
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"


_C = Code


def _e(code: Code, message: str) -> EtcdError:
    return EtcdError(code, message)


# Raise with `raise ErrX` is wrong (shared instance, traceback accumulates): use `raise err(ErrX)`.
def err(proto: EtcdError) -> EtcdError:
    """A fresh exception equal to `proto`, safe to raise."""
    return EtcdError(proto.code, proto.message)


# --- KV / request validation -------------------------------------------------------------
ErrEmptyKey = _e(_C.INVALID_ARGUMENT, "etcdserver: key is not provided")
ErrKeyNotFound = _e(_C.INVALID_ARGUMENT, "etcdserver: key not found")
ErrValueProvided = _e(_C.INVALID_ARGUMENT, "etcdserver: value is provided")
ErrLeaseProvided = _e(_C.INVALID_ARGUMENT, "etcdserver: lease is provided")
ErrTooManyOps = _e(_C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
ErrDuplicateKey = _e(_C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
ErrInvalidSortOption = _e(_C.INVALID_ARGUMENT, "etcdserver: invalid sort option")
ErrRequestTooLarge = _e(_C.INVALID_ARGUMENT, "etcdserver: request is too large")
ErrCompacted = _e(_C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
ErrFutureRev = _e(_C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
ErrNoSpace = _e(_C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
ErrTooManyRequests = _e(_C.RESOURCE_EXHAUSTED, "etcdserver: too many requests")

# --- Lease ---------------------------------------------------------------------------------
ErrLeaseNotFound = _e(_C.NOT_FOUND, "etcdserver: requested lease not found")
ErrLeaseExist = _e(_C.FAILED_PRECONDITION, "etcdserver: lease already exists")
ErrLeaseTTLTooLarge = _e(_C.OUT_OF_RANGE, "etcdserver: too large lease TTL")

# --- Cluster / membership ------------------------------------------------------------------
ErrMemberExist = _e(_C.FAILED_PRECONDITION, "etcdserver: member ID already exist")
ErrPeerURLExist = _e(_C.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
ErrMemberNotEnoughStarted = _e(
    _C.FAILED_PRECONDITION,
    "etcdserver: re-configuration failed due to not enough started members",
)
ErrMemberBadURLs = _e(_C.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
ErrMemberNotFound = _e(_C.NOT_FOUND, "etcdserver: member not found")
ErrMemberNotLearner = _e(_C.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
ErrLearnerNotReady = _e(
    _C.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member which is in sync with leader",
)
ErrTooManyLearners = _e(_C.FAILED_PRECONDITION, "etcdserver: too many learner members in cluster")
ErrClusterIDMismatch = _e(_C.FAILED_PRECONDITION, "etcdserver: cluster ID mismatch")

# --- Server / raft state -------------------------------------------------------------------
ErrNoLeader = _e(_C.UNAVAILABLE, "etcdserver: no leader")
# raft refused a proposal while a leader exists (e.g. during a leadership transfer); etcd
# returns raft's own error text, which the gRPC layer reports as Unknown.
ErrProposalDropped = _e(_C.UNKNOWN, "raft proposal dropped")
ErrNotLeader = _e(_C.FAILED_PRECONDITION, "etcdserver: not leader")
ErrLeaderChanged = _e(_C.UNAVAILABLE, "etcdserver: leader changed")
ErrNotCapable = _e(_C.FAILED_PRECONDITION, "etcdserver: not capable")
ErrStopped = _e(_C.UNAVAILABLE, "etcdserver: server stopped")
ErrTimeout = _e(_C.UNAVAILABLE, "etcdserver: request timed out")
ErrTimeoutDueToLeaderFail = _e(
    _C.UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure"
)
ErrTimeoutDueToConnectionLost = _e(
    _C.UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost"
)
ErrTimeoutWaitAppliedIndex = _e(
    _C.UNAVAILABLE, "etcdserver: request timed out, waiting for the applied index took too long"
)
ErrUnhealthy = _e(_C.UNAVAILABLE, "etcdserver: unhealthy cluster")
ErrCorrupt = _e(_C.DATA_LOSS, "etcdserver: corrupt cluster")
ErrTimeoutLeaderTransfer = _e(
    _C.UNAVAILABLE, "etcdserver: request timed out, leader transfer took too long"
)
ErrBadLeaderTransferee = _e(_C.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
ErrNotSupportedForLearner = _e(
    _C.FAILED_PRECONDITION, "etcdserver: rpc not supported for learner"
)

# --- Auth ------------------------------------------------------------------------------------
ErrRootUserNotExist = _e(_C.FAILED_PRECONDITION, "etcdserver: root user does not exist")
ErrRootRoleNotExist = _e(
    _C.FAILED_PRECONDITION, "etcdserver: root user does not have root role"
)
ErrUserAlreadyExist = _e(_C.FAILED_PRECONDITION, "etcdserver: user name already exists")
ErrUserEmpty = _e(_C.INVALID_ARGUMENT, "etcdserver: user name is empty")
ErrUserNotFound = _e(_C.FAILED_PRECONDITION, "etcdserver: user name not found")
ErrRoleAlreadyExist = _e(_C.FAILED_PRECONDITION, "etcdserver: role name already exists")
ErrRoleNotFound = _e(_C.FAILED_PRECONDITION, "etcdserver: role name not found")
ErrRoleEmpty = _e(_C.INVALID_ARGUMENT, "etcdserver: role name is empty")
ErrAuthFailed = _e(
    _C.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password"
)
ErrPermissionDenied = _e(_C.PERMISSION_DENIED, "etcdserver: permission denied")
ErrRoleNotGranted = _e(_C.FAILED_PRECONDITION, "etcdserver: role is not granted to the user")
ErrPermissionNotGranted = _e(
    _C.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"
)
ErrAuthNotEnabled = _e(_C.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
ErrInvalidAuthToken = _e(_C.UNAUTHENTICATED, "etcdserver: invalid auth token")
ErrInvalidAuthMgmt = _e(_C.INVALID_ARGUMENT, "etcdserver: invalid auth management")
ErrAuthOldRevision = _e(_C.INVALID_ARGUMENT, "etcdserver: revision of auth store is old")

# --- Cancellation ---------------------------------------------------------------------------
ErrWatchCanceled = _e(_C.CANCELLED, "etcdserver: watch canceled")
ErrRequestCanceled = _e(_C.CANCELLED, "etcdserver: request canceled")

# Texts that appear in-band (watch cancel_reason etc.), not as statuses.
WATCH_DUPLICATE_ID_REASON = "mvcc: duplicate watch ID provided on the WatchStream"
