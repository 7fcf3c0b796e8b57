"""Real server processes on loopback: the reference etcd and conch.

Everything here starts genuine OS processes (``etcd`` or ``python -m conch``) bound to
127.0.0.1, waits for them by polling with a deadline, and cleans them up on every path
(context manager, pytest finalizers, ``atexit``, and -- on Linux -- a parent-death signal
so a SIGKILLed pytest does not leak servers).

Typical use::

    with EtcdProcess(base_dir=tmp_path) as srv:          # started and ready
        cp = etcdctl(srv, "put", "foo", "bar")
        assert cp.stdout == "OK\\n"
        srv.restart()

Signals are only ever sent to the pid this module started (``Popen.send_signal``).

Ports, environments, the reference binaries and spawning come from :mod:`devkit.procs`
(re-exported here: ``free_port``, ``clean_env``, ``etcd_binary``, ``etcdctl_binary``,
``REPO_ROOT``).

Environment knobs:
  CONCH_ETCD_BIN / CONCH_ETCDCTL_BIN   paths of the reference binaries (default: PATH, /usr/bin)
  CONCH_REQUIRE_ETCD=1                 (used by conftest) missing binaries fail instead of skip
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from devkit.procs import (
    REPO_ROOT,
    clean_env,
    conch_env,
    etcd_binary,
    etcdctl_binary,
    free_port,
    log_tail,
    spawn_logged,
)

__all__ = [
    "REPO_ROOT",
    "SERVER_KINDS",
    "ConchProcess",
    "EtcdProcess",
    "ServerProcess",
    "ServerStartError",
    "clean_env",
    "conch_available",
    "etcd_available",
    "etcd_binary",
    "etcdctl",
    "etcdctl_binary",
    "etcdctl_popen",
    "free_port",
    "probe",
    "require_etcd",
    "running",
    "stop_all",
]

DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_ETCDCTL_TIMEOUT = 30.0


# --------------------------------------------------------------------------- binaries


def etcd_available() -> bool:
    return etcd_binary() is not None and etcdctl_binary() is not None


def require_etcd() -> bool:
    return os.environ.get("CONCH_REQUIRE_ETCD", "") not in ("", "0", "false", "no")


def conch_available() -> bool:
    """True once the conch package can be run as ``python -m conch``."""
    return (REPO_ROOT / "conch" / "__main__.py").is_file()


# --------------------------------------------------------------------------- readiness probe


def _grpc_range_probe(endpoint: str, timeout: float) -> str | None:
    """One linearizable KV.Range of key "health"; None on success, else the error text.

    Uses raw bytes (RangeRequest{key: "health"}) so it does not depend on conch's
    generated protobuf modules. A linearizable read also proves a leader exists.
    """
    import grpc

    channel = grpc.insecure_channel(endpoint)
    try:
        rpc = channel.unary_unary("/etcdserverpb.KV/Range")
        rpc(b"\x0a\x06health", timeout=timeout)
        return None
    except grpc.RpcError as e:  # includes deadline exceeded / unavailable
        code = e.code() if hasattr(e, "code") else None
        details = e.details() if hasattr(e, "details") else str(e)
        return f"{code}: {details}"
    finally:
        channel.close()


def _etcdctl_health_probe(endpoint: str, timeout: float) -> str | None:
    ctl = etcdctl_binary()
    if ctl is None:
        return "no probe available (neither grpcio nor etcdctl)"
    try:
        cp = etcdctl(
            endpoint,
            f"--dial-timeout={max(timeout, 0.2):.1f}s",
            f"--command-timeout={max(timeout, 0.2):.1f}s",
            "endpoint",
            "health",
            timeout=timeout + 5,
        )
    except subprocess.TimeoutExpired:
        return "etcdctl endpoint health timed out"
    return None if cp.returncode == 0 else (cp.stderr or cp.stdout).strip()


def probe(endpoint: str, timeout: float = 1.0) -> str | None:
    """None if ``endpoint`` answers a linearizable Range, else a short error string."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        return _etcdctl_health_probe(endpoint, timeout)
    return _grpc_range_probe(endpoint, timeout)


# --------------------------------------------------------------------------- processes

_live: weakref.WeakSet[ServerProcess] = weakref.WeakSet()
_name_counter = itertools.count(1)


class ServerStartError(RuntimeError):
    pass


class ServerProcess:
    """One server OS process on 127.0.0.1 with its own data dir and log file.

    Subclasses provide ``command()``. Ports are chosen once (``free_port``) and kept
    across ``restart()`` so clients can reconnect to the same endpoint.
    """

    kind = "server"

    def __init__(
        self,
        name: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
        http_port: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name or f"{self.kind}{next(_name_counter)}"
        self._own_base = base_dir is None
        self.base_dir = Path(
            tempfile.mkdtemp(prefix=f"conch-harness-{self.name}-") if base_dir is None else base_dir
        )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.base_dir / f"{self.name}.data"
        self.log_path = self.base_dir / f"{self.name}.log"
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self._auto_ports = client_port is None and peer_port is None
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.http_port = http_port
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        if self.data_dir.exists():  # fresh data dir, always
            shutil.rmtree(self.data_dir)
        _live.add(self)

    # -- addresses -----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """host:port, as etcdctl --endpoints and grpc.insecure_channel take it."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def http_url(self) -> str | None:
        return f"http://127.0.0.1:{self.http_port}" if self.http_port else None

    def __str__(self) -> str:
        return self.endpoint

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.endpoint} pid={self.pid}>"

    # -- to override ---------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def process_env(self) -> dict[str, str]:
        return clean_env(self.env)

    def cwd(self) -> str:
        return str(self.base_dir)

    # -- lifecycle -----------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def spawn(self) -> None:
        """Start the process without waiting for readiness."""
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        self.starts += 1
        self.proc = spawn_logged(
            cmd, self.log_path, header=f"harness: start #{self.starts}",
            env=self.process_env(), cwd=self.cwd(), die_with_parent=self.die_with_parent,
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll until a linearizable Range succeeds; raise ServerStartError on deadline/exit."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = 0.02
        last_err: str | None = "never probed"
        while True:
            if self.proc is None:
                raise ServerStartError(f"{self.name}: not started")
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError(
                    f"{self.name} ({self.kind}) exited with code {rc} before becoming ready;"
                    f" log {self.log_path} tail:\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerStartError(
                    f"{self.name} ({self.kind}) not ready at {self.endpoint} after {timeout}s"
                    f" (last probe: {last_err}); log {self.log_path} tail:\n{self.log_tail()}"
                )
            last_err = probe(self.endpoint, timeout=min(1.0, max(remaining, 0.05)))
            if last_err is None:
                return
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2, 0.25)

    def start(self, timeout: float | None = None) -> ServerProcess:
        """spawn() + wait_ready(). On failure the process is killed and the log tail shown.

        If the harness chose the ports itself and the server failed because an address
        was in use (a race with an unrelated process), fresh ports are tried, up to 3 times.
        """
        attempts = 3 if (self._auto_ports and self.starts == 0) else 1
        for attempt in range(attempts):
            self.spawn()
            try:
                self.wait_ready(timeout)
                return self
            except ServerStartError as e:
                self._terminate(signal.SIGKILL, DEFAULT_STOP_TIMEOUT)
                in_use = "address already in use" in self.log_tail(200).lower()
                if in_use and attempt + 1 < attempts:
                    self.client_port, self.peer_port = free_port(), free_port()
                    if self.http_port:
                        self.http_port = free_port()
                    if self.data_dir.exists():
                        shutil.rmtree(self.data_dir)
                    continue
                print(str(e), file=sys.stderr)
                raise
        raise AssertionError("unreachable")

    def _terminate(self, sig: int, timeout: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return proc.wait(timeout)
        return proc.returncode

    def kill(
        self, sig: int = signal.SIGKILL, wait: bool | None = None, timeout: float = 10.0
    ) -> int | None:
        """Send ``sig`` to the started pid. Waits for exit for terminating signals
        (KILL/TERM/INT/QUIT) unless ``wait`` says otherwise; SIGSTOP/SIGCONT do not wait."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else None
        if wait is None:
            wait = sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
        self.proc.send_signal(sig)
        if wait:
            return self.proc.wait(timeout)
        return None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """Graceful stop: SIGCONT (in case it was stopped), SIGTERM, then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
        return self._terminate(signal.SIGTERM, timeout)

    def restart(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> ServerProcess:
        """Stop (SIGTERM by default; pass SIGKILL for a crash) and start on the same
        data dir and ports."""
        if sig == signal.SIGTERM:
            self.stop()
        else:
            self.kill(sig, wait=True)
        self.spawn()
        try:
            self.wait_ready(timeout)
        except ServerStartError as e:
            self._terminate(signal.SIGKILL, DEFAULT_STOP_TIMEOUT)
            print(str(e), file=sys.stderr)
            raise
        return self

    def close(self) -> None:
        """Stop the process; remove the base dir if the harness created it."""
        try:
            self.stop()
        finally:
            _live.discard(self)
            if self._own_base:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EtcdProcess(ServerProcess):
    """The reference etcd, single member, client and peer URLs on 127.0.0.1."""

    kind = "etcd"

    def command(self) -> list[str]:
        binary = etcd_binary()
        if binary is None:
            raise ServerStartError("etcd binary not found (set CONCH_ETCD_BIN)")
        return [
            binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"harness-{self.name}",
            "--logger", "zap",
            "--log-outputs", "stderr",
            *self.extra_args,
        ]  # fmt: skip


class ConchProcess(ServerProcess):
    """conch via ``sys.executable -m conch`` with etcd's flags.

    By default only the client-side flags are given (how conch is normally started);
    ``peer_flags=True`` adds exactly the peer/cluster flags EtcdProcess gives etcd, so both
    report the same kind of member (e.g. for differential tests of ``member list``).
    """

    kind = "conch"

    def __init__(self, *args: Any, peer_flags: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer_flags = peer_flags

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "conch",
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
        ]  # fmt: skip
        if self.peer_flags:
            cmd += [
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", f"{self.name}={self.peer_url}",
                "--initial-cluster-state", "new",
                "--initial-cluster-token", f"harness-{self.name}",
            ]  # fmt: skip
        if self.http_port:
            cmd += ["--listen-client-http-urls", self.http_url or ""]
        return cmd + self.extra_args

    def process_env(self) -> dict[str, str]:
        return conch_env(self.env)

    def cwd(self) -> str:
        return str(REPO_ROOT)


SERVER_KINDS: dict[str, type[ServerProcess]] = {"etcd": EtcdProcess, "conch": ConchProcess}


def stop_all() -> None:
    """Stop every server this process started and has not closed yet."""
    for srv in list(_live):
        with contextlib.suppress(Exception):
            srv.close()


atexit.register(stop_all)


@contextlib.contextmanager
def running(kind: str, **kwargs: object) -> Iterator[ServerProcess]:
    """``with running("etcd", base_dir=...) as srv:`` -- started, ready, always closed."""
    srv = SERVER_KINDS[kind](**kwargs)  # type: ignore[arg-type]
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


# --------------------------------------------------------------------------- etcdctl


def etcdctl(
    endpoint: str | ServerProcess,
    *args: str,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_ETCDCTL_TIMEOUT,
    check: bool = False,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run ``etcdctl --endpoints=ENDPOINT ARGS...`` (API v3) and capture text output.

    Raises subprocess.TimeoutExpired after ``timeout`` (the child is killed by
    subprocess.run). Returns the CompletedProcess whatever the exit code unless ``check``.
    ``text=False`` returns bytes (e.g. for ``-w protobuf``); ``input`` must then be bytes.
    """
    ctl = etcdctl_binary()
    if ctl is None:
        raise FileNotFoundError("etcdctl binary not found (set CONCH_ETCDCTL_BIN)")
    ep = endpoint.endpoint if isinstance(endpoint, ServerProcess) else endpoint
    full_env = clean_env({"ETCDCTL_API": "3", **(env or {})})
    return subprocess.run(
        [ctl, f"--endpoints={ep}", *args],
        input=input,
        capture_output=True,
        text=text,
        env=full_env,
        timeout=timeout,
        check=check,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def etcdctl_popen(endpoint: str | ServerProcess, *args: str) -> subprocess.Popen[str]:
    """``etcdctl --endpoints=ENDPOINT ARGS...`` (API v3) as a running child with text pipes
    for stdout and stderr and stdin from /dev/null (e.g. ``watch``); the caller stops it."""
    ctl = etcdctl_binary()
    if ctl is None:
        raise FileNotFoundError("etcdctl binary not found (set CONCH_ETCDCTL_BIN)")
    ep = endpoint.endpoint if isinstance(endpoint, ServerProcess) else endpoint
    return subprocess.Popen(
        [ctl, f"--endpoints={ep}", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"ETCDCTL_API": "3"}),
    )
