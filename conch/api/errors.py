"""Mapping server errors onto gRPC statuses for the servicers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from conch.errors import EtcdError

log = logging.getLogger("conch.api")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def unary(fn: F) -> F:
    """Wrap a unary servicer method: EtcdError becomes its status; anything else Unknown."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except EtcdError as exc:
            await context.abort(exc.code, exc.message)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:  # never crash the member on one bad request
            log.exception("unexpected error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))

    return wrapper  # type: ignore[return-value]
