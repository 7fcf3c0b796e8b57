"""Leader-only work: run something only while this process leads an election, and stop it
before the lease can expire so a successor never overlaps (issue 5).

- ``run_while_leader(client, name, fn, *, proposal, ttl, grace, margin)`` /
  ``with leader(client, name, proposal=...) as lead:`` -- in-process work; ``fn(cancel,
  token)`` gets a ``Cancel`` handle and the ``FencingToken`` (key, create revision, lease).
- ``hold_and_run(...)`` -- a command under an out-of-process watchdog (``conchctl elect
  NAME PROPOSAL -- CMD``).
- ``Timings`` / ``TimingError`` -- ttl / grace / margin validation.
"""

from conch.ha.command import CommandResult, hold_and_run
from conch.ha.runner import Cancel, Leadership, leader, run_while_leader
from conch.ha.timing import TimingError, Timings
from conch.ha.token import FencingToken

__all__ = [
    "Cancel", "CommandResult", "FencingToken", "Leadership", "TimingError", "Timings",
    "hold_and_run", "leader", "run_while_leader",
]  # fmt: skip
