"""Typed client errors, mapped from etcd's gRPC status code and exact message.

Every error the client raises is a ``ClientError`` carrying the gRPC ``code`` and the
server's ``message``. Known etcd messages map to a subclass (``Compacted``,
``LeaseNotFound``, ...); anything else maps by status code (``Unavailable``,
``DeadlineExceeded``, ``PermissionDenied``, ...) or stays a plain ``ClientError``.
"""

from __future__ import annotations

import grpc

from conch import errors as E


class ClientError(Exception):
    """An error from an etcd server (or the transport), with its gRPC code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class Compacted(ClientError):
    """The requested revision has been compacted; ``compact_revision`` when known (watch)."""

    def __init__(
        self,
        code: grpc.StatusCode = grpc.StatusCode.OUT_OF_RANGE,
        message: str = E.ErrCompacted.message,
        compact_revision: int = 0,
    ) -> None:
        super().__init__(code, message)
        self.compact_revision = compact_revision


class FutureRevision(ClientError):
    pass


class LeaseNotFound(ClientError):
    pass


class LeaseExists(ClientError):
    pass


class LeaseTTLTooLarge(ClientError):
    pass


class KeyNotFound(ClientError):
    pass


class EmptyKey(ClientError):
    pass


class ValueProvided(ClientError):
    pass


class LeaseProvided(ClientError):
    pass


class InvalidSortOption(ClientError):
    pass


class TooManyOps(ClientError):
    pass


class DuplicateKey(ClientError):
    pass


class RequestTooLarge(ClientError):
    pass


class NoSpace(ClientError):
    pass


class TooManyRequests(ClientError):
    pass


class Unavailable(ClientError):
    """gRPC UNAVAILABLE: the member (or every endpoint) could not serve the call."""


class NoLeader(Unavailable):
    pass


class LeaderChanged(Unavailable):
    pass


class Timeout(Unavailable):
    """The server's own request timeout ("etcdserver: request timed out...")."""


class NotLeader(ClientError):
    pass


class NotSupportedForLearner(ClientError):
    pass


class DeadlineExceeded(ClientError):
    """The call's deadline passed (client side) or the server reported a context deadline."""


class Canceled(ClientError):
    pass


class PermissionDenied(ClientError):
    pass


class InvalidAuthToken(ClientError):
    pass


class AuthFailed(ClientError):
    pass


class AuthNotEnabled(ClientError):
    pass


class UserEmpty(ClientError):
    pass


class UserExists(ClientError):
    pass


class UserNotFound(ClientError):
    pass


class RoleExists(ClientError):
    pass


class RoleNotFound(ClientError):
    pass


class RootUserNotExist(ClientError):
    pass


class RootRoleNotExist(ClientError):
    pass


class MemberNotFound(ClientError):
    pass


class MemberExists(ClientError):
    pass


class PeerURLExists(ClientError):
    pass


class BadLeaderTransferee(ClientError):
    pass


class Corrupt(ClientError):
    pass


BY_MESSAGE: dict[str, type[ClientError]] = {
    E.ErrCompacted.message: Compacted,
    E.ErrFutureRev.message: FutureRevision,
    E.ErrLeaseNotFound.message: LeaseNotFound,
    E.ErrLeaseExist.message: LeaseExists,
    E.ErrLeaseTTLTooLarge.message: LeaseTTLTooLarge,
    E.ErrKeyNotFound.message: KeyNotFound,
    E.ErrEmptyKey.message: EmptyKey,
    E.ErrValueProvided.message: ValueProvided,
    E.ErrLeaseProvided.message: LeaseProvided,
    E.ErrInvalidSortOption.message: InvalidSortOption,
    E.ErrTooManyOps.message: TooManyOps,
    E.ErrDuplicateKey.message: DuplicateKey,
    E.ErrRequestTooLarge.message: RequestTooLarge,
    E.ErrNoSpace.message: NoSpace,
    E.ErrTooManyRequests.message: TooManyRequests,
    E.ErrNoLeader.message: NoLeader,
    E.ErrNotLeader.message: NotLeader,
    E.ErrLeaderChanged.message: LeaderChanged,
    E.ErrTimeout.message: Timeout,
    E.ErrTimeoutDueToLeaderFail.message: Timeout,
    E.ErrTimeoutDueToConnectionLost.message: Timeout,
    E.ErrTimeoutWaitAppliedIndex.message: Timeout,
    E.ErrTimeoutLeaderTransfer.message: Timeout,
    E.ErrNotSupportedForLearner.message: NotSupportedForLearner,
    E.ErrPermissionDenied.message: PermissionDenied,
    E.ErrInvalidAuthToken.message: InvalidAuthToken,
    E.ErrAuthFailed.message: AuthFailed,
    E.ErrAuthNotEnabled.message: AuthNotEnabled,
    E.ErrUserEmpty.message: UserEmpty,
    E.ErrUserAlreadyExist.message: UserExists,
    E.ErrUserNotFound.message: UserNotFound,
    E.ErrRoleAlreadyExist.message: RoleExists,
    E.ErrRoleNotFound.message: RoleNotFound,
    E.ErrRootUserNotExist.message: RootUserNotExist,
    E.ErrRootRoleNotExist.message: RootRoleNotExist,
    E.ErrMemberNotFound.message: MemberNotFound,
    E.ErrMemberExist.message: MemberExists,
    E.ErrPeerURLExist.message: PeerURLExists,
    E.ErrBadLeaderTransferee.message: BadLeaderTransferee,
    E.ErrCorrupt.message: Corrupt,
    E.ErrWatchCanceled.message: Canceled,
    E.ErrRequestCanceled.message: Canceled,
}

BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: InvalidAuthToken,
    grpc.StatusCode.CANCELLED: Canceled,
}


def from_status(code: grpc.StatusCode, message: str) -> ClientError:
    """The ClientError for a gRPC status: by etcd's exact message first, then by code."""
    cls = BY_MESSAGE.get(message) or BY_CODE.get(code) or ClientError
    return cls(code, message)


__all__ = [name for name, v in globals().items() if isinstance(v, type)] + ["from_status"]
