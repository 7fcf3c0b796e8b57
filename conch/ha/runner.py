"""Leader-only work in this process: ``leader()`` (a context manager) and
``run_while_leader()``.

A watchdog *thread* (not the caller's loop) watches the session: at
``expires_at - margin - grace`` (or as soon as the session ends) it sets the cancellation
handle; if the work is still running at ``expires_at - margin`` it calls ``on_overrun``,
by default ending the whole process (``os._exit``): in-process work cannot be killed any
other way, and a successor may lead once the lease expires. Work that must survive a
stopped (SIGSTOPped) process belongs in a child process: see ``conch.ha.command``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from conch.client.concurrency import Election, Session
from conch.client.errors import ClientError
from conch.ha.timing import Timings
from conch.ha.token import FencingToken

log = logging.getLogger("conch.ha")
T = TypeVar("T")
OVERRUN_EXIT_STATUS = 70


class Cancel:
    """Cancellation handle given to leader-only work. ``is_set()`` / ``wait(timeout)``;
    ``reason`` says why; ``deadline`` is the monotonic time by which the work must be done
    (``expires_at - margin``, frozen when cancelled)."""

    def __init__(self, deadline: Callable[[], float]) -> None:
        self._event = threading.Event()
        self._deadline = deadline
        self._frozen: float | None = None
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self._frozen = self._deadline()
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    @property
    def deadline(self) -> float:
        return self._frozen if self._frozen is not None else self._deadline()

    def __repr__(self) -> str:
        return f"Cancel(set={self.is_set()}, reason={self.reason!r})"


def _exit_process() -> None:
    sys.stderr.write(
        "conch.ha: leader-only work still running at its deadline (the lease may expire and a "
        f"successor start); exiting with status {OVERRUN_EXIT_STATUS}\n"
    )
    sys.stderr.flush()
    os._exit(OVERRUN_EXIT_STATUS)


class Leadership:
    """Held leadership: ``token``, ``cancel``, ``session``, ``election``."""

    def __init__(
        self,
        session: Session,
        election: Election,
        timings: Timings,
        on_overrun: Callable[[], None],
        poll: float = 0.05,
    ) -> None:
        self.session = session
        self.election = election
        self.timings = timings
        assert election.key is not None
        self.token = FencingToken(election.key, election.rev, session.lease_id)
        self.cancel = Cancel(lambda: timings.kill_at(session.expires_at))
        self._on_overrun = on_overrun
        self._poll = poll
        self._finished = threading.Event()
        self._thread = threading.Thread(
            target=self._watchdog, name=f"conch-ha-watchdog-{session.lease_id:x}", daemon=True
        )
        self._thread.start()

    def _watchdog(self) -> None:
        s, t = self.session, self.timings
        while not self._finished.is_set():
            if s.done.is_set():
                self.cancel.set("session ended (lease gone)")
                break
            left = t.stop_at(s.expires_at) - time.monotonic()
            if left <= 0:
                self.cancel.set("lease deadline reached (keepalives not acknowledged)")
                break
            self._finished.wait(min(left, self._poll))
        else:
            return
        # cancelled while the work runs: it must end by the (frozen) hard deadline
        if not self._finished.wait(max(0.0, self.cancel.deadline - time.monotonic())):
            self._on_overrun()

    def finish(self) -> None:
        self._finished.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)

    def still_leader(self) -> bool:
        """Locally: not cancelled and the lease cannot have expired."""
        return not self.cancel.is_set() and not self.session.expired()


@contextlib.contextmanager
def leader(
    client: Any,
    name: str | bytes,
    *,
    proposal: str | bytes,
    ttl: int = 15,
    grace: float = 2.0,
    margin: float = 1.0,
    campaign_timeout: float | None = None,
    on_overrun: Callable[[], None] | None = None,
) -> Iterator[Leadership]:
    """``with leader(client, "svc", proposal="host-1") as lead:`` -- campaigns (blocking),
    then yields a Leadership; do the work while ``not lead.cancel.is_set()`` and guard
    writes with ``lead.token.compare()``. On exit: resign (when still leader) and revoke.
    Raises TimingError for unsafe timings, SessionExpired / WaitTimeout from the campaign."""
    timings = Timings(ttl, grace, margin)
    session = Session(client, ttl=ttl)
    lead: Leadership | None = None
    try:
        timings.validate(session.ttl)  # the server may grant another TTL
        election = Election(session, name)
        election.campaign(proposal, timeout=campaign_timeout)
        lead = Leadership(session, election, timings, on_overrun or _exit_process)
        yield lead
    finally:
        if lead is not None:
            lead.finish()
            if not session.expired():
                with contextlib.suppress(ClientError):
                    lead.election.resign()
        with contextlib.suppress(ClientError):
            session.close()


def run_while_leader(
    client: Any,
    name: str | bytes,
    fn: Callable[[Cancel, FencingToken], T],
    *,
    proposal: str | bytes,
    ttl: int = 15,
    grace: float = 2.0,
    margin: float = 1.0,
    campaign_timeout: float | None = None,
    on_overrun: Callable[[], None] | None = None,
) -> T:
    """Campaign for ``name``; once leader call ``fn(cancel, token)`` in this thread and
    return its result, then resign. ``cancel`` is set at ``expires_at - margin - grace``
    or when the session ends; past ``expires_at - margin`` ``on_overrun`` runs (default:
    exit the process with status 70)."""
    with leader(
        client, name, proposal=proposal, ttl=ttl, grace=grace, margin=margin,
        campaign_timeout=campaign_timeout, on_overrun=on_overrun,
    ) as lead:  # fmt: skip
        return fn(lead.cancel, lead.token)
