"""``AsyncClient``: the asyncio etcd v3 client on ``grpc.aio`` channels.

The same methods as ``conch.client.Client`` as coroutines; watches and keepalives are
asyncio tasks feeding an ``asyncio.Queue`` (``async for``), stopped by ``await x.cancel()``
/ ``await x.close()``. Request building, result conversion, error mapping and retry
decisions come from the shared sans-IO module ``conch.client._protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from conch.client import _protocol as P
from conch.client import errors as errs
from conch.client._protocol import (
    Alarm,
    Compare,
    DeleteResult,
    GetResult,
    HashKV,
    Header,
    Key,
    Lease,
    LeaseTTL,
    MemberListResult,
    Op,
    PutResult,
    Status,
    TxnResult,
    Value,
    WatchResult,
)
from conch.client.sync import RECONNECT_CODES, _deadline_error
from conch.proto.etcdserverpb import rpc_pb2 as pb
from conch.proto.etcdserverpb import rpc_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()
WatchCallback = Callable[[WatchResult | errs.ClientError], object | Awaitable[object]]


class AsyncClient:
    """An asyncio client for etcd v3 servers; ``async with AsyncClient(...) as c``."""

    def __init__(
        self,
        endpoints: Sequence[str] | str = ("127.0.0.1:2379",),
        timeout: float = 5.0,
        user: str | None = None,
        password: str | None = None,
        ca_cert: str | bytes | None = None,
        cert_cert: str | bytes | None = None,
        cert_key: str | bytes | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self._eps = P.Endpoints(endpoints)
        self.timeout = timeout
        self._credentials = P.tls_credentials(ca_cert, cert_cert, cert_key)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._user = user
        self._password = password
        self._token: str | None = None
        self._closed = False
        self._streams: weakref.WeakSet[AsyncWatch | AsyncKeepAlive] = weakref.WeakSet()

    async def connect(self) -> AsyncClient:
        """Authenticate when user/password were given (``async with`` does this)."""
        if self._user is not None and self._token is None:
            await self.authenticate(self._user, self._password or "")
        return self

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def endpoints(self) -> list[str]:
        return list(self._eps.all)

    def _stub(self, endpoint: str, service: str) -> Any:
        if self._closed:
            raise errs.Canceled(grpc.StatusCode.CANCELLED, "client is closed")
        stub = self._stubs.get((endpoint, service))
        if stub is None:
            ch = self._channels.get(endpoint)
            if ch is None:
                if self._credentials is not None:
                    ch = grpc.aio.secure_channel(
                        endpoint, self._credentials, options=P.channel_options()
                    )
                else:
                    ch = grpc.aio.insecure_channel(endpoint, options=P.channel_options())
                self._channels[endpoint] = ch
            stub = getattr(rpc_pb2_grpc, service + "Stub")(ch)
            self._stubs[(endpoint, service)] = stub
        return stub

    def _metadata(self, auth: bool = True) -> list[tuple[str, str]] | None:
        token = self._token
        return [("token", token)] if (auth and token) else None

    async def _reauthenticate(self) -> bool:
        if self._user is None:
            return False
        self._token = None
        self._token = await self._run(P.authenticate(self._user, self._password or ""))
        return True

    async def _run(
        self, call: P.Call[T], timeout: float | None = None, endpoint: str | None = None
    ) -> T:
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        reauthed = False
        last: errs.ClientError | None = None
        backoff = 0.025
        while True:
            eps = [P.normalize_endpoint(endpoint)] if endpoint else self._eps.order()
            for ep in eps:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _deadline_error(budget, last)
                try:
                    rpc = getattr(self._stub(ep, call.service), call.method)
                    resp = await rpc(
                        call.request, timeout=remaining, metadata=self._metadata(call.auth)
                    )
                    return call.convert(resp)
                except grpc.RpcError as e:
                    err = P.error_from_rpc(e)
                if isinstance(err, errs.InvalidAuthToken) and call.auth and not reauthed:
                    reauthed = True
                    if await self._reauthenticate():
                        rest = max(deadline - time.monotonic(), 0.001)
                        return await self._run(call, rest, endpoint)
                if isinstance(err, errs.DeadlineExceeded) or not P.should_retry(
                    err, call.idempotent
                ):
                    raise err
                last = err
                if not endpoint:
                    self._eps.failed(ep)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _deadline_error(budget, last)
            await asyncio.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, 0.5)

    async def close(self) -> None:
        for s in list(self._streams):
            await s.close()
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        self._stubs.clear()
        for ch in channels:
            await ch.close()

    # ------------------------------------------------------------------ KV
    async def get(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        from_key: bool = False,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        sort_order: str | None = None,
        sort_target: str | None = None,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
        timeout: float | None = None,
    ) -> GetResult:
        call = P.get(
            key, prefix=prefix, range_end=range_end, from_key=from_key, revision=revision,
            limit=limit, serializable=serializable, keys_only=keys_only, count_only=count_only,
            sort_order=sort_order, sort_target=sort_target, min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision, min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )  # fmt: skip
        return await self._run(call, timeout)

    async def put(
        self,
        key: Key,
        value: Value,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
        timeout: float | None = None,
    ) -> PutResult:
        call = P.put(
            key, value, lease=lease, prev_kv=prev_kv, ignore_value=ignore_value,
            ignore_lease=ignore_lease,
        )  # fmt: skip
        return await self._run(call, timeout)

    async def delete(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        from_key: bool = False,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> DeleteResult:
        call = P.delete(key, prefix=prefix, range_end=range_end, from_key=from_key, prev_kv=prev_kv)
        return await self._run(call, timeout)

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        return await self._run(P.txn(compare, success, failure), timeout)

    async def compact(
        self, revision: int, physical: bool = False, *, timeout: float | None = None
    ) -> Header:
        return await self._run(P.compact(revision, physical), timeout)

    # ------------------------------------------------------------------ watch
    async def watch(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        from_key: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
        progress_notify: bool = False,
        timeout: float | None = None,
    ) -> AsyncWatch:
        """Start a watch and wait until the server created it (see Client.watch)."""
        spec = P.watch_spec(
            key, prefix=prefix, range_end=range_end, from_key=from_key,
            start_revision=start_revision, prev_kv=prev_kv, no_put=no_put,
            no_delete=no_delete, progress_notify=progress_notify,
        )  # fmt: skip
        return await self._start_watch(spec, None, timeout)

    async def watch_callback(
        self, key: Key, callback: WatchCallback, **watch_kwargs: Any
    ) -> AsyncWatch:
        """``callback`` (plain or async) gets each WatchResult, or the ending ClientError."""
        timeout = watch_kwargs.pop("timeout", None)
        return await self._start_watch(P.watch_spec(key, **watch_kwargs), callback, timeout)

    async def _start_watch(
        self, spec: P.WatchSpec, callback: WatchCallback | None, timeout: float | None
    ) -> AsyncWatch:
        w = AsyncWatch(self, spec, callback)
        self._streams.add(w)
        budget = self.timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(w._settled.wait(), budget)
        except TimeoutError:
            await w.cancel()
            raise errs.DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"watch not created within {budget}s"
            ) from None
        return w

    # ------------------------------------------------------------------ lease
    async def lease_grant(
        self, ttl: int, lease_id: int = 0, *, timeout: float | None = None
    ) -> Lease:
        return await self._run(P.lease_grant(ttl, lease_id), timeout)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> Header:
        return await self._run(P.lease_revoke(lease_id), timeout)

    async def lease_time_to_live(
        self, lease_id: int, keys: bool = False, *, timeout: float | None = None
    ) -> LeaseTTL:
        return await self._run(P.lease_time_to_live(lease_id, keys), timeout)

    async def leases(self, *, timeout: float | None = None) -> list[int]:
        return await self._run(P.leases(), timeout)

    async def lease_keep_alive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        last: errs.ClientError | None = None
        while True:
            for ep in self._eps.order():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _deadline_error(budget, last)
                call = self._stub(ep, "Lease").LeaseKeepAlive(
                    timeout=remaining, metadata=self._metadata()
                )
                try:
                    await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
                    resp = await call.read()
                    if resp is not grpc.aio.EOF:
                        return int(resp.TTL)
                    err: errs.ClientError = errs.Unavailable(
                        grpc.StatusCode.UNAVAILABLE, "keepalive stream closed without a response"
                    )
                except grpc.RpcError as e:
                    err = P.error_from_rpc(e)
                finally:
                    call.cancel()
                if isinstance(err, errs.InvalidAuthToken) and await self._reauthenticate():
                    continue
                if isinstance(err, errs.DeadlineExceeded) or not P.should_retry(err, True):
                    raise err
                last = err
                self._eps.failed(ep)
            if deadline - time.monotonic() <= 0:
                raise _deadline_error(budget, last)
            await asyncio.sleep(0.05)

    def lease_keep_alive(self, lease_id: int) -> AsyncKeepAlive:
        """A task keeping the lease alive until ``await ka.close()`` or TTL 0 (``.gone``).
        Must be called with a running event loop."""
        ka = AsyncKeepAlive(self, lease_id)
        self._streams.add(ka)
        return ka

    # ------------------------------------------------------------------ cluster
    async def member_list(self, *, timeout: float | None = None) -> MemberListResult:
        return await self._run(P.member_list(), timeout)

    async def member_add(
        self, peer_urls: Sequence[str], learner: bool = False, *, timeout: float | None = None
    ) -> MemberListResult:
        return await self._run(P.member_add(peer_urls, learner), timeout)

    async def member_remove(
        self, member_id: int, *, timeout: float | None = None
    ) -> MemberListResult:
        return await self._run(P.member_remove(member_id), timeout)

    async def member_update(
        self, member_id: int, peer_urls: Sequence[str], *, timeout: float | None = None
    ) -> MemberListResult:
        return await self._run(P.member_update(member_id, peer_urls), timeout)

    async def member_promote(
        self, member_id: int, *, timeout: float | None = None
    ) -> MemberListResult:
        return await self._run(P.member_promote(member_id), timeout)

    # ------------------------------------------------------------------ maintenance
    async def status(self, endpoint: str | None = None, *, timeout: float | None = None) -> Status:
        return await self._run(P.status(), timeout, endpoint)

    async def hash_kv(
        self, revision: int = 0, endpoint: str | None = None, *, timeout: float | None = None
    ) -> HashKV:
        return await self._run(P.hash_kv(revision), timeout, endpoint)

    async def alarms(self, *, timeout: float | None = None) -> list[Alarm]:
        return await self._run(P.alarms(), timeout)

    async def alarm_disarm(
        self, member_id: int = 0, alarm: str = "NOSPACE", *, timeout: float | None = None
    ) -> list[Alarm]:
        return await self._run(P.alarm_disarm(member_id, alarm), timeout)

    async def defragment(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> Header:
        return await self._run(P.defragment(), timeout, endpoint)

    async def move_leader(self, target_id: int, *, timeout: float | None = None) -> Header:
        return await self._run(P.move_leader(target_id), timeout)

    # ------------------------------------------------------------------ auth
    async def authenticate(
        self, user: str, password: str, *, timeout: float | None = None
    ) -> str:
        self._user, self._password = user, password
        self._token = None
        self._token = await self._run(P.authenticate(user, password), timeout)
        return self._token

    async def auth_enable(self, *, timeout: float | None = None) -> Header:
        return await self._run(P.auth_enable(), timeout)

    async def auth_disable(self, *, timeout: float | None = None) -> Header:
        return await self._run(P.auth_disable(), timeout)

    async def user_add(
        self, name: str, password: str = "", *, no_password: bool = False,
        timeout: float | None = None,
    ) -> Header:  # fmt: skip
        return await self._run(P.user_add(name, password, no_password), timeout)

    async def user_delete(self, name: str, *, timeout: float | None = None) -> Header:
        return await self._run(P.user_delete(name), timeout)

    async def user_change_password(
        self, name: str, password: str, *, timeout: float | None = None
    ) -> Header:
        return await self._run(P.user_change_password(name, password), timeout)

    async def user_get(self, name: str, *, timeout: float | None = None) -> list[str]:
        return await self._run(P.user_get(name), timeout)

    async def user_list(self, *, timeout: float | None = None) -> list[str]:
        return await self._run(P.user_list(), timeout)

    async def user_grant_role(
        self, user: str, role: str, *, timeout: float | None = None
    ) -> Header:
        return await self._run(P.user_grant_role(user, role), timeout)

    async def user_revoke_role(
        self, user: str, role: str, *, timeout: float | None = None
    ) -> Header:
        return await self._run(P.user_revoke_role(user, role), timeout)

    async def role_add(self, name: str, *, timeout: float | None = None) -> Header:
        return await self._run(P.role_add(name), timeout)

    async def role_delete(self, name: str, *, timeout: float | None = None) -> Header:
        return await self._run(P.role_delete(name), timeout)

    async def role_list(self, *, timeout: float | None = None) -> list[str]:
        return await self._run(P.role_list(), timeout)

    async def role_grant_permission(
        self, role: str, key: Key, perm: str = "readwrite", *, prefix: bool = False,
        range_end: Key | None = None, from_key: bool = False, timeout: float | None = None,
    ) -> Header:  # fmt: skip
        call = P.role_grant_permission(
            role, key, perm, prefix=prefix, range_end=range_end, from_key=from_key
        )
        return await self._run(call, timeout)

    async def role_revoke_permission(
        self, role: str, key: Key, *, prefix: bool = False, range_end: Key | None = None,
        from_key: bool = False, timeout: float | None = None,
    ) -> Header:  # fmt: skip
        call = P.role_revoke_permission(
            role, key, prefix=prefix, range_end=range_end, from_key=from_key
        )
        return await self._run(call, timeout)


class _AsyncStream:
    """A task running one gRPC bidi stream, reconnecting across endpoints."""

    kind = "stream"

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.error: errs.ClientError | None = None
        self._task: asyncio.Task[None] | None = None

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._main(), name=f"conch-{self.kind}")

    async def _main(self) -> None:
        backoff = 0.05
        try:
            while not self._stop.is_set():
                ep = self._client._eps.current
                try:
                    if await self._one_stream(ep):
                        return
                    backoff = 0.05
                except grpc.RpcError as e:
                    if self._stop.is_set():
                        return
                    err = P.error_from_rpc(e)
                    if isinstance(err, errs.InvalidAuthToken):
                        try:
                            if not await self._client._reauthenticate():
                                raise err
                        except errs.ClientError as auth_err:
                            await self._fail(auth_err)
                            return
                    elif err.code not in RECONNECT_CODES:
                        await self._fail(err)
                        return
                    log.debug("%s on %s broke (%r); reconnecting", self.kind, ep, err)
                except errs.ClientError as err:
                    if not self._stop.is_set():
                        await self._fail(err)
                    return
                self._client._eps.failed(ep)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, 1.0)
        except asyncio.CancelledError:
            pass
        except Exception as e:
            log.exception("%s task failed", self.kind)
            await self._fail(errs.ClientError(grpc.StatusCode.INTERNAL, repr(e)))
        finally:
            self._finish()

    async def _one_stream(self, ep: str) -> bool:
        raise NotImplementedError

    async def _deliver(self, item: Any) -> None:
        self._queue.put_nowait(item)

    async def _fail(self, err: errs.ClientError) -> None:
        self.error = err
        await self._deliver(err)

    def _finish(self) -> None:
        self._queue.put_nowait(_END)

    async def close(self) -> None:
        """Stop the task and wait for it (idempotent)."""
        self._stop.set()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _next(self, timeout: float | None) -> Any:
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no {self.kind} response within {timeout}s") from None
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, errs.ClientError):
            raise item
        return item


class AsyncWatch(_AsyncStream):
    """``async for result in watch``; ``await watch.cancel()``; see ``Watch``."""

    kind = "watch"

    def __init__(
        self, client: AsyncClient, spec: P.WatchSpec, callback: WatchCallback | None = None
    ) -> None:
        super().__init__(client)
        self.state = P.WatchState(spec)
        self._callback = callback
        self._settled = asyncio.Event()
        self._start()

    @property
    def watch_id(self) -> int | None:
        return self.state.watch_id

    async def _one_stream(self, ep: str) -> bool:
        call = self._client._stub(ep, "Watch").Watch(metadata=self._client._metadata())
        try:
            await call.write(self.state.create_request())
            parts: list[pb.WatchResponse] = []
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return self._stop.is_set()
                if resp.fragment:
                    parts.append(resp)
                    continue
                if parts:
                    resp = self.state.merge_fragment([*parts, resp])
                    parts = []
                out = self.state.on_response(resp)
                if self.state.created:
                    self._settled.set()
                if out is None:
                    continue
                if isinstance(out, errs.ClientError):
                    await self._fail(out)
                    return True
                await self._deliver(out)
        finally:
            call.cancel()

    async def _deliver(self, item: Any) -> None:
        if self._callback is None:
            self._queue.put_nowait(item)
            return
        try:
            res = self._callback(item)
            if asyncio.iscoroutine(res):
                await res
        except Exception:
            log.exception("watch callback raised")

    def _finish(self) -> None:
        self._settled.set()
        super()._finish()

    async def cancel(self) -> None:
        await self.close()

    async def get(self, timeout: float | None = None) -> WatchResult:
        result: WatchResult = await self._next(timeout)
        return result

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> WatchResult:
        return await self.get()

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()


class AsyncKeepAlive(_AsyncStream):
    """Keeps a lease alive from a task; ``async for ttl in ka``; ``gone`` after TTL 0."""

    kind = "keepalive"

    def __init__(self, client: AsyncClient, lease_id: int) -> None:
        super().__init__(client)
        self.state = P.KeepAliveState(lease_id)
        self.done = asyncio.Event()
        self._start()

    @property
    def lease_id(self) -> int:
        return self.state.lease_id

    @property
    def ttl(self) -> int:
        return self.state.ttl

    @property
    def gone(self) -> bool:
        return self.state.gone

    @property
    def last_ack_sent_at(self) -> float | None:
        return self.state.last_ack_sent_at

    async def _one_stream(self, ep: str) -> bool:
        self.state.sent_at.clear()
        call = self._client._stub(ep, "Lease").LeaseKeepAlive(metadata=self._client._metadata())
        try:
            while not self._stop.is_set():
                await call.write(self.state.request(time.monotonic()))
                try:
                    resp = await asyncio.wait_for(
                        call.read(), max(self.state.interval(), 1.0) * 3
                    )
                except TimeoutError:
                    return False  # no answer: reconnect (maybe elsewhere)
                if resp is grpc.aio.EOF:
                    return False
                ttl = self.state.on_response(resp)
                self._queue.put_nowait(ttl)
                if self.state.gone:
                    return True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.state.interval())
            return True
        finally:
            call.cancel()

    def _finish(self) -> None:
        self.done.set()
        super()._finish()

    async def get(self, timeout: float | None = None) -> int:
        ttl: int = await self._next(timeout)
        return ttl

    def __aiter__(self) -> AsyncKeepAlive:
        return self

    async def __anext__(self) -> int:
        return await self.get()

    async def __aenter__(self) -> AsyncKeepAlive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
