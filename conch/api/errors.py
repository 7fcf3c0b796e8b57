"""The one table from conch's error codes to gRPC (and HTTP) statuses, and its helpers.

The server raises `EtcdError(Code, message)`; only this module knows how a `Code` looks on
the wire. Unary handlers use `@unary`, streaming handlers `await abort(context, exc)`, and
calls this member makes to another member turn the status they get back into an
`EtcdError` with `from_rpc_error`, so an error crosses a forward unchanged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from conch.errors import Code, EtcdError

log = logging.getLogger("conch.api")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_S = grpc.StatusCode

#: Code -> (gRPC status, HTTP status of grpc-gateway's HTTPStatusFromCode).
STATUS: dict[Code, tuple[grpc.StatusCode, int]] = {
    Code.OK: (_S.OK, 200),
    Code.CANCELLED: (_S.CANCELLED, 408),
    Code.UNKNOWN: (_S.UNKNOWN, 500),
    Code.INVALID_ARGUMENT: (_S.INVALID_ARGUMENT, 400),
    Code.DEADLINE_EXCEEDED: (_S.DEADLINE_EXCEEDED, 504),
    Code.NOT_FOUND: (_S.NOT_FOUND, 404),
    Code.ALREADY_EXISTS: (_S.ALREADY_EXISTS, 409),
    Code.PERMISSION_DENIED: (_S.PERMISSION_DENIED, 403),
    Code.RESOURCE_EXHAUSTED: (_S.RESOURCE_EXHAUSTED, 429),
    # grpc-gateway deliberately maps FailedPrecondition to 400, not 412.
    Code.FAILED_PRECONDITION: (_S.FAILED_PRECONDITION, 400),
    Code.ABORTED: (_S.ABORTED, 409),
    Code.OUT_OF_RANGE: (_S.OUT_OF_RANGE, 400),
    Code.UNIMPLEMENTED: (_S.UNIMPLEMENTED, 501),
    Code.INTERNAL: (_S.INTERNAL, 500),
    Code.UNAVAILABLE: (_S.UNAVAILABLE, 503),
    Code.DATA_LOSS: (_S.DATA_LOSS, 500),
    Code.UNAUTHENTICATED: (_S.UNAUTHENTICATED, 401),
}
_FROM_GRPC = {status: code for code, (status, _) in STATUS.items()}


def grpc_status(exc: EtcdError) -> grpc.StatusCode:
    return STATUS[exc.code][0]


def http_status(exc: EtcdError) -> int:
    return STATUS[exc.code][1]


def from_rpc_error(exc: grpc.aio.AioRpcError) -> EtcdError:
    """The status another member answered, as the EtcdError it was raised as there."""
    return EtcdError(_FROM_GRPC.get(exc.code(), Code.UNKNOWN), exc.details() or "")


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: EtcdError) -> NoReturn:
    await context.abort(grpc_status(exc), exc.message)
    raise AssertionError("unreachable: context.abort raises")


def unary(fn: F) -> F:
    """Wrap a unary servicer method: EtcdError becomes its status; anything else Unknown."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(self, request, context)
        except EtcdError as exc:
            await abort(context, exc)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:  # never crash the member on one bad request
            log.exception("unexpected error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))

    return wrapper  # type: ignore[return-value]
