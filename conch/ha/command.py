"""Run a command while holding leadership (or a lock), with the stop deadline enforced by
a separate watchdog process (``_watchdog.py``) between this runner and the command.

    runner (this process: campaign, keepalives, deadline updates)
      └── watchdog (PDEATHSIG=SIGTERM: stops the command if the runner dies)
            └── CMD (PDEATHSIG=SIGKILL: dies if the watchdog dies)

The runner sends the watchdog ``expires_at - margin - grace`` after every acknowledged
keepalive; if the runner is SIGSTOPped or hangs, the watchdog still stops the command at
the last deadline it got, before the server can expire the lease and a successor start.
Call from a thread that lives as long as the command (Linux sends the parent-death signal
when the *thread* that spawned the child ends); the CLI uses the main thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conch.client.concurrency import Election, Mutex, Session
from conch.client.errors import ClientError
from conch.ha.timing import Timings
from conch.ha.token import FencingToken

WATCHDOG = str(Path(__file__).with_name("_watchdog.py"))
POLL = 0.02


@dataclass(frozen=True)
class CommandResult:
    """``reason``: "exited" (the command ended on its own), "stopped" (``stop`` was set),
    "lost" (the session ended / the deadline passed). ``returncode`` is the command's
    status, negative when a signal ended it (as in subprocess), None when no command ran
    (never acquired, or no command given)."""

    reason: str
    returncode: int | None
    token: FencingToken | None


class _Holder:
    """Election or Mutex behind one interface."""

    def __init__(self, session: Session, name: str, proposal: str | None) -> None:
        self.session = session
        self.proposal = proposal
        self.recipe: Election | Mutex = (
            Mutex(session, name) if proposal is None else Election(session, name)
        )

    def acquire(self) -> FencingToken:
        r = self.recipe
        if isinstance(r, Election):
            assert self.proposal is not None
            r.campaign(self.proposal)
        else:
            r.lock()
        assert r.key is not None
        return FencingToken(r.key, r.rev, self.session.lease_id)

    def release(self) -> None:
        r = self.recipe
        if isinstance(r, Election):
            r.resign()
        else:
            r.unlock()

    def env(self, token: FencingToken) -> dict[str, str]:
        if isinstance(self.recipe, Election):
            return token.env("CONCH_ELECTION")
        env = token.env("CONCH_LOCK")
        hdr = self.recipe.header
        env["ETCD_LOCK_KEY"] = env["CONCH_LOCK_KEY"]
        env["ETCD_LOCK_REV"] = str(getattr(hdr, "revision", token.rev))  # as etcdctl
        return env


def _acquire_interruptibly(holder: _Holder, stop: threading.Event) -> FencingToken | None:
    """Acquire in a helper thread; if ``stop`` is set first, close the session (revoking
    the lease, which ends the wait) and return None."""
    box: list[Any] = []
    done = threading.Event()

    def work() -> None:
        try:
            box.append(holder.acquire())
        except BaseException as e:  # handed to the caller's thread
            box.append(e)
        finally:
            done.set()

    t = threading.Thread(target=work, name="conch-ha-acquire", daemon=True)
    t.start()
    while not done.wait(POLL):
        if stop.is_set():
            with contextlib.suppress(ClientError):
                holder.session.close()
            done.wait(holder.session.client_timeout() + 2.0)
            return None
    if isinstance(box[0], BaseException):
        if stop.is_set():
            return None
        raise box[0]
    token: FencingToken = box[0]
    return token


def hold_and_run(
    client: Any,
    name: str,
    argv: Sequence[str],
    *,
    proposal: str | None,
    timings: Timings,
    stop: threading.Event,
    env: Mapping[str, str] | None = None,
    on_acquired: Callable[[FencingToken], None] | None = None,
) -> CommandResult:
    """Campaign (``proposal`` given) or lock (``proposal`` None) on ``name``, then run
    ``argv`` under the watchdog (or, with no argv, hold until ``stop`` or the session
    ends). Releases (resign / unlock) and revokes the lease before returning."""
    session = Session(client, ttl=timings.ttl)
    try:
        timings.validate(session.ttl)
        holder = _Holder(session, name, proposal)
        token = _acquire_interruptibly(holder, stop)
        if token is None:
            return CommandResult("stopped", None, None)
        if on_acquired is not None:
            on_acquired(token)
        if argv:
            reason, rc = _run_watched(session, argv, timings, stop, env, holder.env(token))
        else:
            reason, rc = _hold(session, timings, stop), None
        if reason != "lost" and not session.expired():
            with contextlib.suppress(ClientError):
                holder.release()
        return CommandResult(reason, rc, token)
    finally:
        with contextlib.suppress(ClientError):
            session.close()


def _hold(session: Session, timings: Timings, stop: threading.Event) -> str:
    while not stop.wait(POLL):
        if session.done.is_set() or time.monotonic() >= timings.kill_at(session.expires_at):
            return "lost"
    return "stopped"


def _run_watched(
    session: Session,
    argv: Sequence[str],
    timings: Timings,
    stop: threading.Event,
    base_env: Mapping[str, str] | None,
    token_env: Mapping[str, str],
) -> tuple[str, int]:
    env = dict(os.environ if base_env is None else base_env)
    env.update(token_env)
    stop_at = timings.stop_at(session.expires_at)
    r, w = os.pipe()
    sr, sw = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, WATCHDOG, str(r), str(sw), repr(timings.grace), repr(stop_at),
             str(os.getpid()), "--", *argv],
            pass_fds=(r, sw), env=env,
        )  # fmt: skip
    except BaseException:
        os.close(w)
        os.close(sr)
        raise
    finally:
        os.close(r)
        os.close(sw)
    reason: str | None = None
    sent = stop_at

    def tell(line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(w, line.encode() + b"\n")

    try:
        while True:
            try:
                rc = proc.wait(POLL)
                break
            except subprocess.TimeoutExpired:
                pass
            if reason is not None:
                continue
            if stop.is_set():
                reason = "stopped"
                tell("S")
                continue
            deadline = timings.stop_at(session.expires_at)
            if session.done.is_set() or time.monotonic() >= deadline:
                reason = "lost"
                tell("S")
            elif deadline != sent:
                sent = deadline
                tell(f"D {deadline!r}")
    finally:
        os.close(w)  # EOF: the watchdog stops the command if we got here by an exception
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timings.grace + 1.0)
    if reason is None and (
        session.done.is_set() or time.monotonic() >= timings.stop_at(session.expires_at)
    ):
        reason = "lost"  # the watchdog ended it at the deadline (we were stopped / hung)
    status = _read_status(sr)
    return reason or "exited", rc if status is None else status


def _read_status(fd: int) -> int | None:
    """The command's raw status from the watchdog (negative: killed by that signal)."""
    try:
        ready, _, _ = select.select([fd], [], [], 0)
        data = os.read(fd, 64) if ready else b""
    finally:
        os.close(fd)
    if data.startswith(b"R "):
        with contextlib.suppress(ValueError):
            return int(data[2:].split(b"\n")[0])
    return None
