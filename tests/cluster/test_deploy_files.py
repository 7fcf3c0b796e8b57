"""The deployment pieces of the cluster issue: deploy/conch.conf.example, the systemd unit,
and scripts/local_cluster.py (`make cluster`) run for real on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conch.server import config as config_mod
from devkit.harness import REPO_ROOT, clean_env, etcdctl
from devkit.polling import poll

DEPLOY = REPO_ROOT / "deploy"
SCRIPT = REPO_ROOT / "scripts" / "local_cluster.py"

# The seed article's etcd.conf keys and etcd.service lines.
SEED_CONF_KEYS = (
    "ETCD_NAME", "ETCD_DATA_DIR", "ETCD_LISTEN_CLIENT_URLS", "ETCD_ADVERTISE_CLIENT_URLS",
    "ETCD_INITIAL_ADVERTISE_PEER_URLS", "ETCD_LISTEN_PEER_URLS", "ETCD_INITIAL_CLUSTER",
    "ETCD_INITIAL_CLUSTER_STATE",
)  # fmt: skip
SEED_UNIT: dict[str, dict[str, str | None]] = {
    "Unit": {"Description": None, "After": "network.target"},
    "Service": {
        "Type": "simple", "WorkingDirectory": None,
        "EnvironmentFile": "-/etc/conch/conch.conf", "ExecStart": None,
        "KillMode": "process", "Restart": "always", "RestartSec": "3",
        "LimitNOFILE": "655350", "LimitNPROC": "655350", "PrivateTmp": "false",
        "SuccessExitStatus": "143",
    },
    "Install": {"WantedBy": "multi-user.target"},
}  # fmt: skip


# --------------------------------------------------------------------------- file parsers


def parse_environment_file(text: str) -> dict[str, str]:
    """What systemd's EnvironmentFile= makes of `text` (systemd's parse_env_file rules for the
    forms that occur in env files: `#`/`;` comment lines, KEY=VALUE, whitespace around the
    value trimmed, double or single quotes removed, backslash escapes inside double quotes and
    unquoted, a trailing backslash continues the line). No variable expansion."""
    env: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + lines[i]
            i += 1
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        key, eq, raw = stripped.partition("=")
        assert eq, f"not KEY=VALUE: {line!r}"
        key = key.strip()
        assert key.isidentifier(), f"invalid variable name {key!r}"
        raw = raw.strip()
        value = []
        quote = None
        j = 0
        while j < len(raw):
            c = raw[j]
            if quote == "'":
                if c == "'":
                    quote = None
                else:
                    value.append(c)
            elif c == "\\" and j + 1 < len(raw):
                j += 1
                value.append(raw[j])
            elif quote == '"':
                if c == '"':
                    quote = None
                else:
                    value.append(c)
            elif c in "'\"":
                quote = c
            else:
                value.append(c)
            j += 1
        assert quote is None, f"unterminated quote in {line!r}"
        env[key] = "".join(value)
    return env


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            current = sections.setdefault(s[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, eq, value = s.partition("=")
        assert eq, f"not Key=Value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_environment_file_parser_follows_systemd() -> None:
    env = parse_environment_file(
        '# c\n; c\nA=1\nB="x,y z"\n  C = \'q"\' \nD="a\\"b"\nE=one\\\ntwo\n'
    )
    assert env == {"A": "1", "B": "x,y z", "C": 'q"', "D": 'a"b', "E": "onetwo"}


# --------------------------------------------------------------------------- (a) conf example


def test_conf_example_loads_as_three_member_cluster() -> None:
    env = parse_environment_file((DEPLOY / "conch.conf.example").read_text())
    for key in SEED_CONF_KEYS + ("ETCD_INITIAL_CLUSTER_TOKEN",):
        assert key in env, f"{key} missing from conch.conf.example"
    warnings: list[str] = []
    cfg = config_mod.load([], env, warn=warnings.append)
    assert warnings == []  # every name is one conch knows
    members = cfg.initial_cluster_map()
    assert len(members) == 3
    assert cfg.name in members
    assert members[cfg.name] == cfg.initial_advertise_peer_urls == cfg.listen_peer_urls
    assert len({u for urls in members.values() for u in urls}) == 3
    assert cfg.initial_cluster_state == "new"
    assert cfg.initial_cluster_token == env["ETCD_INITIAL_CLUSTER_TOKEN"]
    assert cfg.listen_client_urls and cfg.advertise_client_urls
    assert cfg.data_dir == env["ETCD_DATA_DIR"]
    assert len({config_mod.compute_member_id(u, cfg.initial_cluster_token)
                for u in members.values()}) == 3


# --------------------------------------------------------------------------- (b) unit file


def test_unit_file_has_the_seed_keys() -> None:
    unit = parse_unit((DEPLOY / "systemd" / "conch.service").read_text())
    for section, keys in SEED_UNIT.items():
        assert section in unit, f"[{section}] missing"
        for key, want in keys.items():
            got = unit[section].get(key)
            assert got and len(got) == 1, f"{section}.{key}: {got}"
            if want is not None:
                assert got[0] == want, f"{section}.{key}={got[0]}, want {want}"
    exec_start = unit["Service"]["ExecStart"][0]
    assert exec_start.split()[0].startswith("/") and exec_start.split()[0].endswith("/conch")
    assert unit["Service"]["WorkingDirectory"][0].startswith("/")
    # The file the unit reads is the one the example documents.
    first = (DEPLOY / "conch.conf.example").read_text().splitlines()[0]
    assert "/etc/conch/conch.conf" in first


# --------------------------------------------------------------------------- (c) make cluster


def _ports_free(ports: list[int]) -> bool:
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


STEP = 10


def _layout(base: int) -> list[int]:
    """Client and peer ports local_cluster.py uses with --base-port base --port-step STEP."""
    return [base + off + d for off in (0, 2 * STEP, 3 * STEP) for d in (0, 1)]


def _free_base() -> int:
    """A base port whose six ports are free, below the kernel's ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000)
        if _ports_free(_layout(base)):
            return base
    raise RuntimeError("no free port block found")


def _gone(pid: int) -> bool:
    """The process no longer exists (or is a zombie awaiting its reaper)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class _Script:
    """scripts/local_cluster.py as a child process, its output collected by a thread."""

    def __init__(self, data_dir: Path) -> None:
        self.base = _free_base()
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--base-port", str(self.base),
             "--port-step", str(STEP), "--data-dir", str(data_dir), "--grace", "10"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=clean_env(), cwd=str(REPO_ROOT), start_new_session=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{self.base + off}" for off in (0, 2 * STEP, 3 * STEP)]

    def member_pids(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        with self._lock:
            for line in self.lines:
                if line.startswith("local_cluster: started "):
                    words = line.split()
                    pids[words[2]] = int(words[4])
        return pids

    def close(self) -> None:
        """Last resort: never leave the script or its members behind."""
        pids = list(self.member_pids().values())
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in pids:
            if not _gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._reader.join(timeout=5)


@pytest.fixture
def local_cluster(tmp_path: Path, needs_etcd: None) -> Iterator[_Script]:
    script = _Script(tmp_path / "cluster.conch")
    try:
        yield script
    finally:
        script.close()


def _cluster_status(script: _Script) -> list[dict[str, Any]] | None:
    """`etcdctl endpoint status --cluster` when it shows three members and one leader."""
    if script.proc.poll() is not None:
        raise AssertionError(f"local_cluster.py exited early:\n{script.output()}")
    try:
        out = etcdctl(",".join(script.endpoints), "endpoint", "status", "--cluster",
                      "-w", "json", timeout=10)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    statuses: list[dict[str, Any]] = json.loads(out.stdout)
    ids = {s["Status"]["header"]["member_id"] for s in statuses}
    leaders = {s["Status"]["leader"] for s in statuses}
    if len(statuses) != 3 or len(ids) != 3 or len(leaders) != 1 or not leaders <= ids:
        return None
    return statuses


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_make_cluster_script_runs_three_members_and_stops_on_signal(
    local_cluster: _Script, stop: signal.Signals
) -> None:
    script = local_cluster
    statuses = poll(lambda: _cluster_status(script), 60, "three members and one leader",
                    interval=0.2)
    assert sorted(s["Endpoint"] for s in statuses) == sorted(script.endpoints)
    pids = poll(lambda: p if len(p := script.member_pids()) == 3 else None, 10, "member pids")
    assert set(pids) == {"infra1", "infra2", "infra3"}

    assert etcdctl(script.endpoints[1], "put", "deploy", "files", timeout=10).returncode == 0
    for ep in script.endpoints:
        got = etcdctl(ep, "get", "deploy", "--print-value-only", timeout=10)
        assert got.returncode == 0 and got.stdout.strip() == "files", got.stderr

    # Every member's output lines carry its name.
    out = script.output()
    for name in pids:
        assert f"{name} | ready to serve client requests" in out

    script.proc.send_signal(stop)  # the script's pid only; it stops the members itself
    rc = script.proc.wait(timeout=30)
    poll(lambda: all(_gone(p) for p in pids.values()), 10, "member processes to be gone")
    script._reader.join(timeout=5)
    assert rc == 0, script.output()
    for name, pid in pids.items():
        assert f"local_cluster: {name} (pid {pid}) stopped: killed by SIGTERM" in script.output()


def test_make_cluster_script_fails_when_a_member_dies(local_cluster: _Script) -> None:
    script = local_cluster
    poll(lambda: _cluster_status(script), 60, "three members and one leader", interval=0.2)
    pids = script.member_pids()
    assert len(pids) == 3
    os.kill(pids["infra2"], signal.SIGKILL)  # a pid the script started, not ours
    rc = script.proc.wait(timeout=30)
    assert rc == 1, script.output()
    poll(lambda: all(_gone(p) for p in pids.values()), 10, "member processes to be gone")
    script._reader.join(timeout=5)
    assert "infra2 (pid" in script.output() and "died unexpectedly: killed by SIGKILL" in (
        script.output()
    )


def test_local_cluster_script_refuses_ports_out_of_range() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--base-port", "40000"],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    assert out.returncode == 2 and "--port-step" in out.stderr
