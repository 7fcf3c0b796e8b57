"""``Client``: the blocking etcd v3 client on ``grpc`` channels.

Unary calls run on the caller's thread. Each ``Watch`` and each ``KeepAlive`` owns one
background thread (feeding a queue), which ``cancel()`` / ``close()`` stop and join.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

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
from conch.proto.etcdserverpb import rpc_pb2 as pb
from conch.proto.etcdserverpb import rpc_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

# Stream errors after which a watch / keepalive reconnects (anything else ends it).
RECONNECT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
_END = object()
JOIN_TIMEOUT = 10.0


class Client:
    """A blocking client for etcd v3 servers (conch or etcd); also a context manager."""

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
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._user = user
        self._password = password
        self._token: str | None = None
        self._closed = False
        self._streams: weakref.WeakSet[Watch | KeepAlive] = weakref.WeakSet()
        if user is not None:
            self.authenticate(user, password or "")

    # ------------------------------------------------------------------ plumbing
    @property
    def endpoints(self) -> list[str]:
        return list(self._eps.all)

    def _stub(self, endpoint: str, service: str) -> Any:
        with self._lock:
            if self._closed:
                raise errs.Canceled(grpc.StatusCode.CANCELLED, "client is closed")
            stub = self._stubs.get((endpoint, service))
            if stub is None:
                ch = self._channels.get(endpoint)
                if ch is None:
                    if self._credentials is not None:
                        ch = grpc.secure_channel(
                            endpoint, self._credentials, options=P.channel_options()
                        )
                    else:
                        ch = grpc.insecure_channel(endpoint, options=P.channel_options())
                    self._channels[endpoint] = ch
                stub = getattr(rpc_pb2_grpc, service + "Stub")(ch)
                self._stubs[(endpoint, service)] = stub
            return stub

    def _metadata(self, auth: bool = True) -> list[tuple[str, str]] | None:
        token = self._token
        return [("token", token)] if (auth and token) else None

    def _reauthenticate(self) -> bool:
        if self._user is None:
            return False
        self._token = None
        self._token = self._run(P.authenticate(self._user, self._password or ""))
        return True

    def _run(self, call: P.Call[T], timeout: float | None = None, endpoint: str | None = None) -> T:
        """One unary call with a deadline, failover and the retry rules of _protocol."""
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
                    resp = rpc(call.request, timeout=remaining, metadata=self._metadata(call.auth))
                    return call.convert(resp)
                except grpc.RpcError as e:
                    err = P.error_from_rpc(e)
                if isinstance(err, errs.InvalidAuthToken) and call.auth and not reauthed:
                    reauthed = True
                    if self._reauthenticate():
                        return self._run(call, max(deadline - time.monotonic(), 0.001), endpoint)
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
            time.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, 0.5)

    def close(self) -> None:
        """Stop every watch and keepalive of this client and close the channels."""
        for s in list(self._streams):
            s.close()
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
            self._stubs.clear()
        for ch in channels:
            ch.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ KV
    def get(
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
        return self._run(call, timeout)

    def put(
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
        return self._run(call, timeout)

    def delete(
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
        return self._run(call, timeout)

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        return self._run(P.txn(compare, success, failure), timeout)

    def compact(
        self, revision: int, physical: bool = False, *, timeout: float | None = None
    ) -> Header:
        return self._run(P.compact(revision, physical), timeout)

    # ------------------------------------------------------------------ watch
    def watch(
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
    ) -> Watch:
        """Start a watch and wait (up to ``timeout``) until the server has created it, so
        writes made after this returns are seen even with ``start_revision=0``."""
        spec = P.watch_spec(
            key, prefix=prefix, range_end=range_end, from_key=from_key,
            start_revision=start_revision, prev_kv=prev_kv, no_put=no_put,
            no_delete=no_delete, progress_notify=progress_notify,
        )  # fmt: skip
        return self._start_watch(spec, None, timeout)

    def watch_callback(
        self,
        key: Key,
        callback: Callable[[WatchResult | errs.ClientError], object],
        **watch_kwargs: Any,
    ) -> Watch:
        """Like watch(), but ``callback`` is called from the watch thread with each
        WatchResult, or once with the ClientError that ends the watch."""
        timeout = watch_kwargs.pop("timeout", None)
        return self._start_watch(P.watch_spec(key, **watch_kwargs), callback, timeout)

    def _start_watch(
        self,
        spec: P.WatchSpec,
        callback: Callable[[WatchResult | errs.ClientError], object] | None,
        timeout: float | None,
    ) -> Watch:
        w = Watch(self, spec, callback)
        self._streams.add(w)
        budget = self.timeout if timeout is None else timeout
        if not w._settled.wait(budget):
            w.cancel()
            raise errs.DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"watch not created within {budget}s"
            )
        return w

    # ------------------------------------------------------------------ lease
    def lease_grant(self, ttl: int, lease_id: int = 0, *, timeout: float | None = None) -> Lease:
        return self._run(P.lease_grant(ttl, lease_id), timeout)

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> Header:
        return self._run(P.lease_revoke(lease_id), timeout)

    def lease_time_to_live(
        self, lease_id: int, keys: bool = False, *, timeout: float | None = None
    ) -> LeaseTTL:
        return self._run(P.lease_time_to_live(lease_id, keys), timeout)

    def leases(self, *, timeout: float | None = None) -> list[int]:
        return self._run(P.leases(), timeout)

    def lease_keep_alive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        """One keepalive round trip; returns the new TTL (0 = the lease is gone)."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        last: errs.ClientError | None = None
        while True:
            for ep in self._eps.order():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _deadline_error(budget, last)
                done = threading.Event()

                def requests(
                    done: threading.Event = done, wait: float = remaining
                ) -> Iterator[pb.LeaseKeepAliveRequest]:
                    yield pb.LeaseKeepAliveRequest(ID=lease_id)
                    done.wait(wait)

                call = self._stub(ep, "Lease").LeaseKeepAlive(
                    requests(), timeout=remaining, metadata=self._metadata()
                )
                try:
                    for resp in call:
                        return int(resp.TTL)
                    err: errs.ClientError = errs.Unavailable(
                        grpc.StatusCode.UNAVAILABLE, "keepalive stream closed without a response"
                    )
                except grpc.RpcError as e:
                    err = P.error_from_rpc(e)
                finally:
                    done.set()
                    call.cancel()
                if isinstance(err, errs.InvalidAuthToken) and self._reauthenticate():
                    continue
                if isinstance(err, errs.DeadlineExceeded) or not P.should_retry(err, True):
                    raise err
                last = err
                self._eps.failed(ep)
            if deadline - time.monotonic() <= 0:
                raise _deadline_error(budget, last)
            time.sleep(0.05)

    def lease_keep_alive(self, lease_id: int) -> KeepAlive:
        """Keep the lease alive from a background thread (a request every TTL/3) until
        close() or until the server answers TTL 0 (lease gone: ``.gone`` becomes True)."""
        ka = KeepAlive(self, lease_id)
        self._streams.add(ka)
        return ka

    # ------------------------------------------------------------------ cluster
    def member_list(self, *, timeout: float | None = None) -> MemberListResult:
        return self._run(P.member_list(), timeout)

    def member_add(
        self, peer_urls: Sequence[str], learner: bool = False, *, timeout: float | None = None
    ) -> MemberListResult:
        return self._run(P.member_add(peer_urls, learner), timeout)

    def member_remove(self, member_id: int, *, timeout: float | None = None) -> MemberListResult:
        return self._run(P.member_remove(member_id), timeout)

    def member_update(
        self, member_id: int, peer_urls: Sequence[str], *, timeout: float | None = None
    ) -> MemberListResult:
        return self._run(P.member_update(member_id, peer_urls), timeout)

    def member_promote(self, member_id: int, *, timeout: float | None = None) -> MemberListResult:
        return self._run(P.member_promote(member_id), timeout)

    # ------------------------------------------------------------------ maintenance
    def status(self, endpoint: str | None = None, *, timeout: float | None = None) -> Status:
        return self._run(P.status(), timeout, endpoint)

    def hash_kv(
        self, revision: int = 0, endpoint: str | None = None, *, timeout: float | None = None
    ) -> HashKV:
        return self._run(P.hash_kv(revision), timeout, endpoint)

    def alarms(self, *, timeout: float | None = None) -> list[Alarm]:
        return self._run(P.alarms(), timeout)

    def alarm_disarm(
        self, member_id: int = 0, alarm: str = "NOSPACE", *, timeout: float | None = None
    ) -> list[Alarm]:
        return self._run(P.alarm_disarm(member_id, alarm), timeout)

    def defragment(self, endpoint: str | None = None, *, timeout: float | None = None) -> Header:
        return self._run(P.defragment(), timeout, endpoint)

    def move_leader(self, target_id: int, *, timeout: float | None = None) -> Header:
        return self._run(P.move_leader(target_id), timeout)

    # ------------------------------------------------------------------ auth
    def authenticate(self, user: str, password: str, *, timeout: float | None = None) -> str:
        """Get a token and use it for every later call (and re-authenticate with these
        credentials once when the server says the token is invalid)."""
        self._user, self._password = user, password
        self._token = None
        self._token = self._run(P.authenticate(user, password), timeout)
        return self._token

    def auth_enable(self, *, timeout: float | None = None) -> Header:
        return self._run(P.auth_enable(), timeout)

    def auth_disable(self, *, timeout: float | None = None) -> Header:
        return self._run(P.auth_disable(), timeout)

    def user_add(
        self, name: str, password: str = "", *, no_password: bool = False,
        timeout: float | None = None,
    ) -> Header:  # fmt: skip
        return self._run(P.user_add(name, password, no_password), timeout)

    def user_delete(self, name: str, *, timeout: float | None = None) -> Header:
        return self._run(P.user_delete(name), timeout)

    def user_change_password(
        self, name: str, password: str, *, timeout: float | None = None
    ) -> Header:
        return self._run(P.user_change_password(name, password), timeout)

    def user_get(self, name: str, *, timeout: float | None = None) -> list[str]:
        return self._run(P.user_get(name), timeout)

    def user_list(self, *, timeout: float | None = None) -> list[str]:
        return self._run(P.user_list(), timeout)

    def user_grant_role(self, user: str, role: str, *, timeout: float | None = None) -> Header:
        return self._run(P.user_grant_role(user, role), timeout)

    def user_revoke_role(self, user: str, role: str, *, timeout: float | None = None) -> Header:
        return self._run(P.user_revoke_role(user, role), timeout)

    def role_add(self, name: str, *, timeout: float | None = None) -> Header:
        return self._run(P.role_add(name), timeout)

    def role_delete(self, name: str, *, timeout: float | None = None) -> Header:
        return self._run(P.role_delete(name), timeout)

    def role_list(self, *, timeout: float | None = None) -> list[str]:
        return self._run(P.role_list(), timeout)

    def role_grant_permission(
        self, role: str, key: Key, perm: str = "readwrite", *, prefix: bool = False,
        range_end: Key | None = None, from_key: bool = False, timeout: float | None = None,
    ) -> Header:  # fmt: skip
        call = P.role_grant_permission(
            role, key, perm, prefix=prefix, range_end=range_end, from_key=from_key
        )
        return self._run(call, timeout)

    def role_revoke_permission(
        self, role: str, key: Key, *, prefix: bool = False, range_end: Key | None = None,
        from_key: bool = False, timeout: float | None = None,
    ) -> Header:  # fmt: skip
        call = P.role_revoke_permission(
            role, key, prefix=prefix, range_end=range_end, from_key=from_key
        )
        return self._run(call, timeout)


def _deadline_error(budget: float, last: errs.ClientError | None) -> errs.ClientError:
    if last is not None and isinstance(last, errs.Unavailable):
        return last
    msg = f"deadline of {budget}s exceeded" + (f" (last error: {last.message})" if last else "")
    return errs.DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, msg)


class _Stream:
    """A background thread running one gRPC bidi stream, reconnecting across endpoints."""

    kind = "stream"

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._finished = False
        self.error: errs.ClientError | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name=f"conch-{self.kind}")

    def _main(self) -> None:
        backoff = 0.05
        try:
            while not self._stop.is_set():
                ep = self._client._eps.current
                stream_done = threading.Event()
                try:
                    outcome = self._one_stream(ep, stream_done)
                    if outcome:  # finished for good
                        return
                    backoff = 0.05
                except grpc.RpcError as e:
                    if self._stop.is_set():
                        return
                    err = P.error_from_rpc(e)
                    if isinstance(err, errs.InvalidAuthToken):
                        try:
                            if not self._client._reauthenticate():
                                raise err
                        except errs.ClientError as auth_err:
                            self._fail(auth_err)
                            return
                    elif err.code not in RECONNECT_CODES:
                        self._fail(err)
                        return
                    log.debug("%s on %s broke (%r); reconnecting", self.kind, ep, err)
                except errs.ClientError as err:  # e.g. client closed
                    if not self._stop.is_set():
                        self._fail(err)
                    return
                finally:
                    stream_done.set()
                    with self._lock:
                        self._call = None
                self._client._eps.failed(ep)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 1.0)
        except Exception as e:  # a bug: surface it to the consumer instead of hanging
            log.exception("%s thread failed", self.kind)
            self._fail(errs.ClientError(grpc.StatusCode.INTERNAL, repr(e)))
        finally:
            self._finish()

    def _open(self, ep: str, service: str, method: str, requests: Iterator[Any]) -> Any:
        call = getattr(self._client._stub(ep, service), method)(
            requests, metadata=self._client._metadata()
        )
        with self._lock:
            if self._stop.is_set():
                call.cancel()
            self._call = call
        return call

    def _one_stream(self, ep: str, stream_done: threading.Event) -> bool:
        raise NotImplementedError

    def _deliver(self, item: Any) -> None:
        self._queue.put(item)

    def _fail(self, err: errs.ClientError) -> None:
        self.error = err
        self._deliver(err)

    def _finish(self) -> None:
        self._finished = True
        self._queue.put(_END)

    def close(self) -> None:
        """Stop the background thread (joined before returning; idempotent)."""
        with self._lock:
            self._stop.set()
            call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(JOIN_TIMEOUT)
            if self._thread.is_alive():  # pragma: no cover - would be a bug
                raise RuntimeError(f"{self.kind} thread did not stop")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _next(self, timeout: float | None) -> Any:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no {self.kind} response within {timeout}s") from None
        if item is _END:
            self._queue.put(_END)
            raise StopIteration
        if isinstance(item, errs.ClientError):
            raise item
        return item


class Watch(_Stream):
    """An iterator of WatchResult (whole WatchResponses). ``cancel()`` stops it; a compaction
    raises ``Compacted`` from the iterator; a broken stream is resumed on the next endpoint
    from the last delivered revision + 1."""

    kind = "watch"

    def __init__(
        self,
        client: Client,
        spec: P.WatchSpec,
        callback: Callable[[WatchResult | errs.ClientError], object] | None = None,
    ) -> None:
        super().__init__(client)
        self.state = P.WatchState(spec)
        self._callback = callback
        self._settled = threading.Event()  # created, or failed for good
        self._thread.start()

    @property
    def watch_id(self) -> int | None:
        return self.state.watch_id

    def _one_stream(self, ep: str, stream_done: threading.Event) -> bool:
        first = self.state.create_request()

        def requests() -> Iterator[pb.WatchRequest]:
            yield first
            stream_done.wait()

        call = self._open(ep, "Watch", "Watch", requests())
        parts: list[pb.WatchResponse] = []
        for resp in call:
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
                self._fail(out)
                return True
            self._deliver(out)
        # The server ended the stream without a status: reconnect.
        return self._stop.is_set()

    def _deliver(self, item: Any) -> None:
        if self._callback is None:
            self._queue.put(item)
            return
        try:
            self._callback(item)
        except Exception:
            log.exception("watch callback raised")

    def _finish(self) -> None:
        self._settled.set()
        super()._finish()

    def cancel(self) -> None:
        self.close()

    def get(self, timeout: float | None = None) -> WatchResult:
        """The next WatchResult, waiting at most ``timeout`` seconds (TimeoutError); raises
        StopIteration once canceled and the ClientError that ended the watch."""
        result: WatchResult = self._next(timeout)
        return result

    def __iter__(self) -> Iterator[WatchResult]:
        return self

    def __next__(self) -> WatchResult:
        return self.get()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class KeepAlive(_Stream):
    """Keeps a lease alive from a background thread. Iterate for the TTLs answered; ``gone``
    is True (and iteration ends) once the server answers TTL 0; ``last_ack_sent_at`` is the
    monotonic send time of the last answered request."""

    kind = "keepalive"

    def __init__(self, client: Client, lease_id: int) -> None:
        super().__init__(client)
        self.state = P.KeepAliveState(lease_id)
        self.done = threading.Event()
        self._thread.start()

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

    def _one_stream(self, ep: str, stream_done: threading.Event) -> bool:
        self.state.sent_at.clear()
        acked = threading.Event()

        def requests() -> Iterator[pb.LeaseKeepAliveRequest]:
            while not stream_done.is_set() and not self._stop.is_set():
                acked.clear()
                yield self.state.request(time.monotonic())
                # the next request TTL/3 after the answer (or after a timeout)
                if not acked.wait(max(self.state.interval(), 1.0) * 3):
                    continue
                if stream_done.wait(self.state.interval()):
                    return

        call = self._open(ep, "Lease", "LeaseKeepAlive", requests())
        for resp in call:
            ttl = self.state.on_response(resp)
            acked.set()
            self._queue.put(ttl)
            if self.state.gone:
                return True
        return self._stop.is_set()

    def _finish(self) -> None:
        self.done.set()
        super()._finish()

    def get(self, timeout: float | None = None) -> int:
        ttl: int = self._next(timeout)
        return ttl

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        return self.get()

    def __enter__(self) -> KeepAlive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

