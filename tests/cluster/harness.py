"""A conch cluster of real processes on loopback, configured the way the seed article
configures etcd: one `etcd.conf`-shaped environment file per member, no flags."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import grpc

from conch.proto.etcdserverpb import rpc_pb2
from devkit.harness import REPO_ROOT, ConchProcess, free_port
from tests.grpc_stubs import connect


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """The seed's etcd.conf format: KEY=VALUE lines, values double-quoted where needed."""
    lines = [f'{k}="{v}"' if "," in v or "/" in v else f"{k}={v}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def read_env_file(path: Path) -> dict[str, str]:
    """What systemd's EnvironmentFile= makes of such a file."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = " ".join(shlex.split(value)) if value else ""
    return env


class EnvFileMember(ConchProcess):
    """`python -m conch` with no flags at all: everything comes from its env file."""

    def __init__(self, *args: Any, env_file: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env_file = env_file

    def command(self) -> list[str]:
        return [os.environ.get("CONCH_PYTHON", "python3"), "-m", "conch", *self.extra_args]

    def process_env(self) -> dict[str, str]:
        env = super().process_env()
        env.update(read_env_file(self.env_file))
        return env

    def cwd(self) -> str:
        return str(REPO_ROOT)


class Cluster:
    def __init__(self, base_dir: Path, size: int = 3, token: str = "conch-test",
                 extra_env: dict[str, str] | None = None) -> None:
        import sys

        os.environ.setdefault("CONCH_PYTHON", sys.executable)
        self.base_dir = base_dir
        names = [f"instance{i:02d}" for i in range(1, size + 1)]
        client_ports = {n: free_port() for n in names}
        peer_ports = {n: free_port() for n in names}
        initial = ",".join(f"{n}=http://127.0.0.1:{peer_ports[n]}" for n in names)
        self.members: list[EnvFileMember] = []
        for n in names:
            d = base_dir / n
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "etcd.conf"
            values = {
                "ETCD_NAME": n,
                "ETCD_DATA_DIR": str(d / "data"),
                "ETCD_LISTEN_CLIENT_URLS": f"http://127.0.0.1:{client_ports[n]}",
                "ETCD_ADVERTISE_CLIENT_URLS": f"http://127.0.0.1:{client_ports[n]}",
                "ETCD_INITIAL_ADVERTISE_PEER_URLS": f"http://127.0.0.1:{peer_ports[n]}",
                "ETCD_LISTEN_PEER_URLS": f"http://127.0.0.1:{peer_ports[n]}",
                "ETCD_INITIAL_CLUSTER": initial,
                "ETCD_INITIAL_CLUSTER_STATE": "new",
                "ETCD_INITIAL_CLUSTER_TOKEN": token,
                **(extra_env or {}),
            }
            write_env_file(conf, values)
            self.members.append(
                EnvFileMember(n, d, env_file=conf, client_port=client_ports[n],
                              peer_port=peer_ports[n])
            )

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> None:
        for m in self.members:
            m.spawn()
        for m in self.members:
            m.wait_ready()

    def close(self) -> None:
        for m in self.members:
            m.close()


def member_status(endpoint: str) -> rpc_pb2.StatusResponse | None:
    """The member's Status, or None if it does not answer within 2 s."""
    try:
        with connect(endpoint) as s:
            resp: rpc_pb2.StatusResponse = s.maintenance.Status(rpc_pb2.StatusRequest(), timeout=2)
            return resp
    except grpc.RpcError:
        return None


def agreed_leader(cluster: Cluster, among: list[EnvFileMember] | None = None
                  ) -> EnvFileMember | None:
    """The member every live member (or every one of ``among``) agrees is leader, or None."""
    members = among or [m for m in cluster.members if m.is_running()]
    statuses = [member_status(m.endpoint) for m in members]
    if any(s is None for s in statuses):
        return None
    leads = {s.leader for s in statuses if s is not None}
    if len(leads) != 1 or 0 in leads:
        return None
    lead = leads.pop()
    for m, s in zip(members, statuses, strict=True):
        if s is not None and s.header.member_id == lead:
            return m
    return None
