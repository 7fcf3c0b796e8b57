"""Child processes of the developer kit: ports, environments, the reference binaries, spawning.

The one copy of what :mod:`devkit.harness` (single servers for tests) and
:mod:`devkit.robustness.cluster` (clusters behind fault proxies) both need.

Every child started with :func:`spawn_logged` gets PR_SET_PDEATHSIG (SIGKILL) on Linux, so a
crashed or SIGKILLed caller never leaks servers. Linux delivers that signal when the *thread*
that forked the child exits, so every child is forked by one long-lived spawner thread: a
server (re)started from a short-lived thread survives that thread.

Environment knobs:
  CONCH_ETCD_BIN (or ETCD_BIN) / CONCH_ETCDCTL_BIN   the reference binaries (default: PATH,
                                                     then /usr/bin)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: the checkout: the directory holding ``conch/`` and ``devkit/``
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- binaries


def _find_binary(env_vars: tuple[str, ...], name: str) -> str | None:
    for var in env_vars:
        explicit = os.environ.get(var)
        if explicit:
            return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return found
    fallback = f"/usr/bin/{name}"
    return fallback if os.access(fallback, os.X_OK) else None


def etcd_binary() -> str | None:
    """The reference etcd: ``$CONCH_ETCD_BIN`` or ``$ETCD_BIN`` if set, else PATH, else
    /usr/bin; None if there is none (or the one named is not executable)."""
    return _find_binary(("CONCH_ETCD_BIN", "ETCD_BIN"), "etcd")


def etcdctl_binary() -> str | None:
    """The reference etcdctl: ``$CONCH_ETCDCTL_BIN`` if set, else PATH, else /usr/bin."""
    return _find_binary(("CONCH_ETCDCTL_BIN",), "etcdctl")


# --------------------------------------------------------------------------- ports

_port_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host``.

    The kernel picks it (bind to port 0). Ports already handed out by this process are
    never returned again, so servers started concurrently from one process cannot be
    given the same port even if the first one has not bound it yet. A race with an
    unrelated process remains possible (``harness.ServerProcess.start`` retries on bind
    errors when it chose the ports itself).
    """
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a fresh free port")


# --------------------------------------------------------------------------- environments


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without inherited ETCD_*/ETCDCTL_* settings, plus ``extra``.

    etcd exits fatally when a setting is given both as a flag and as an ETCD_* variable
    (conch reads ETCD_* too), and inherited ETCDCTL_* variables would silently change
    etcdctl's behaviour.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    if extra:
        env.update(extra)
    return env


def conch_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`clean_env` for ``python -m conch``: this checkout first on PYTHONPATH (so the
    child runs the conch being tested), unbuffered output."""
    env = clean_env(extra)
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --------------------------------------------------------------------------- spawning

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def parent_death_prefix() -> list[str]:
    """Ask Linux to SIGKILL the child when its parent dies (PR_SET_PDEATHSIG), through
    util-linux's ``setpriv``, which then execs the command (same pid). Not a ``preexec_fn``:
    running Python (ctypes) between fork and exec in a process with gRPC's threads crashed
    children with SIGSEGV before exec or hung in gRPC's atfork handler; without
    ``preexec_fn`` subprocess uses vfork. Empty where there is no setpriv."""
    return [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


_spawner_lock = threading.Lock()
_spawner: ThreadPoolExecutor | None = None


def popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` on the spawner thread, which lives as long as this process (see
    the module doc: PR_SET_PDEATHSIG fires when the forking *thread* exits)."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devkit-spawner")
        spawner = _spawner

    def fork() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, **kwargs)

    return spawner.submit(fork).result()


def stamp() -> str:
    """The time now, UTC, to the millisecond (``HH:MM:SS.mmm``)."""
    t = time.time()
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}"


def spawn_logged(
    cmd: list[str],
    log_path: Path,
    *,
    header: str,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str],
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout and stderr appended to ``log_path``, after a line
    ``=== <header> at <UTC time>: <cmd>``; stdin is /dev/null, the child has its own session
    (a ^C to the caller is not delivered to it) and, with ``die_with_parent``, dies with this
    process (:func:`parent_death_prefix`, forked on the spawner thread)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {header} at {stamp()} UTC: {' '.join(cmd)}\n".encode())
        log.flush()
        return popen(
            (parent_death_prefix() if die_with_parent else []) + cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=str(cwd),
            start_new_session=True,
        )


def log_tail(log_path: Path, lines: int) -> str:
    """The last ``lines`` lines of ``log_path`` (``(no log file)`` if it does not exist)."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])
