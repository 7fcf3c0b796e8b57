"""gRPC stubs for a server started by the harness (works against conch and etcd alike)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from conch.proto.etcdserverpb import rpc_pb2_grpc


@dataclass
class Stubs:
    channel: grpc.Channel
    kv: rpc_pb2_grpc.KVStub
    lease: rpc_pb2_grpc.LeaseStub
    watch: rpc_pb2_grpc.WatchStub
    maintenance: rpc_pb2_grpc.MaintenanceStub
    cluster: rpc_pb2_grpc.ClusterStub

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Stubs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(endpoint: str) -> Stubs:
    ch = grpc.insecure_channel(
        endpoint,
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024),
                 ("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    return Stubs(
        channel=ch,
        kv=rpc_pb2_grpc.KVStub(ch),
        lease=rpc_pb2_grpc.LeaseStub(ch),
        watch=rpc_pb2_grpc.WatchStub(ch),
        maintenance=rpc_pb2_grpc.MaintenanceStub(ch),
        cluster=rpc_pb2_grpc.ClusterStub(ch),
    )


def rpc_error(
    call: Callable[..., object], *args: object, **kwargs: object
) -> tuple[grpc.StatusCode, str]:
    """Run a unary call that must fail; return (code, details)."""
    try:
        call(*args, timeout=10, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    raise AssertionError(f"{call} succeeded but an error was expected")
