"""Timings of the leader-only runner, validated so that work stops before the lease can expire.

With a lease TTL of ``ttl`` seconds the session sends a keepalive every ``ttl / 3``. The
server cannot expire the lease before ``sent + ttl`` where ``sent`` is the (monotonic) send
time of the last acknowledged keepalive: that is ``Session.expires_at``. The runner asks the
work to stop (cancel / SIGTERM) at ``expires_at - margin - grace`` and forcibly ends it
(SIGKILL / process exit) at ``expires_at - margin``, so ``margin`` seconds remain for the
kill to land and for clock-rate differences between us and the server.

For this to work the stop point must lie after the *next* keepalive would normally have been
acknowledged, otherwise a healthy leader stops itself: ``ttl/3 + round trip < ttl - margin -
grace``. We reserve ``min(1 s, ttl/10)`` for the round trip.
"""

from __future__ import annotations

from dataclasses import dataclass


class TimingError(ValueError):
    """An unsafe or impossible combination of ttl / grace / margin."""


def rtt_allowance(ttl: float) -> float:
    return min(1.0, ttl / 10.0)


@dataclass(frozen=True)
class Timings:
    ttl: int = 15
    grace: float = 2.0
    margin: float = 1.0

    def __post_init__(self) -> None:
        self.validate(self.ttl)

    @property
    def keepalive_period(self) -> float:
        return self.ttl / 3.0

    def validate(self, ttl: float) -> None:
        """Raise TimingError unless these timings are safe for a lease of ``ttl`` seconds
        (the requested TTL, or the one the server granted)."""
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise TimingError(f"ttl must be a positive whole number of seconds, not {ttl!r}")
        if not self.grace > 0:
            raise TimingError(
                f"grace must be > 0 seconds (time between SIGTERM and SIGKILL), not {self.grace!r}"
            )
        if not self.margin > 0:
            raise TimingError(
                f"margin must be > 0 seconds (slack before the lease can expire), "
                f"not {self.margin!r}"
            )
        if self.margin + self.grace >= ttl:
            raise TimingError(
                f"margin ({self.margin:g}s) + grace ({self.grace:g}s) must be less than the "
                f"ttl ({ttl}s): the work would have to stop before it started"
            )
        room = ttl - ttl / 3.0 - rtt_allowance(ttl)
        if self.margin + self.grace > room:
            raise TimingError(
                f"unsafe timings for ttl={ttl}s: keepalives are sent every ttl/3 = {ttl / 3:.3g}s, "
                f"so margin ({self.margin:g}s) + grace ({self.grace:g}s) must be at most "
                f"ttl - ttl/3 - {rtt_allowance(ttl):.2g}s (round trip) = {room:.3g}s, or a healthy "
                f"leader would stop itself between two keepalives; raise the ttl or lower "
                f"grace/margin"
            )

    def stop_at(self, expires_at: float) -> float:
        """When to ask the work to stop (cancel / SIGTERM)."""
        return expires_at - self.margin - self.grace

    def kill_at(self, expires_at: float) -> float:
        """When the work must be gone (SIGKILL / exit)."""
        return expires_at - self.margin
