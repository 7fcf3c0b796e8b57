"""The fencing token handed to leader-only work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FencingToken:
    """Who leads, provably: our key, its create revision (strictly increasing across
    successive leaders, since revisions are cluster-wide) and the lease holding the key.

    Guard writes with :meth:`compare` (``Compare.create(key) == rev``): once a successor
    leads, our key is gone and every guarded txn fails."""

    key: bytes
    rev: int
    lease_id: int

    def compare(self) -> Any:
        from conch.client import Compare

        return Compare.create(self.key) == self.rev

    def env(self, prefix: str = "CONCH_ELECTION") -> dict[str, str]:
        """Environment variables for a command: ``<prefix>_KEY``, ``<prefix>_REV`` and
        ``CONCH_LEASE_ID`` (hex, as in the key's suffix)."""
        return {
            f"{prefix}_KEY": self.key.decode("utf-8", "surrogateescape"),
            f"{prefix}_REV": str(self.rev),
            "CONCH_LEASE_ID": format(self.lease_id, "x"),
        }

    def __str__(self) -> str:
        return f"{self.key.decode('utf-8', 'replace')}@{self.rev}"
