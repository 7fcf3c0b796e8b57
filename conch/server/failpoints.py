"""Failpoints: named places where a test can make a member crash or stall.

Off unless the environment variable CONCH_FAILPOINTS is set, e.g.
`CONCH_FAILPOINTS="afterSnapshotInstall=panic,beforeWALSave=sleep(0.5)"`. `panic` exits the
process at once with status 3 (like a Go panic, no clean-up); `sleep(S)` blocks the calling
thread for S seconds. Names follow etcd's gofail points where one exists.
"""

from __future__ import annotations

import os
import sys
import time

_ACTIONS: dict[str, str] = {}
for _item in filter(None, os.environ.get("CONCH_FAILPOINTS", "").split(",")):
    _name, _, _action = _item.partition("=")
    _ACTIONS[_name.strip()] = _action.strip()


def hit(name: str) -> None:
    """Run the action configured for failpoint `name`, if any."""
    action = _ACTIONS.get(name)
    if not action:
        return
    if action == "panic":
        print(f"failpoint {name}: panic", file=sys.stderr, flush=True)
        os._exit(3)
    if action.startswith("sleep(") and action.endswith(")"):
        time.sleep(float(action[6:-1]))
        return
    raise ValueError(f"failpoint {name}: unknown action {action!r}")
