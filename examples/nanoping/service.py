#!/usr/bin/env python3
"""nanoPing, the seed article's service, in Python: several copies campaign on /nanoPing;
only the leader runs its task. As in the Go original: the leader logs "elect: success",
"[info] Service master" and "[info] Task start."; the others log "[info] Service is not
master" every --interval seconds (10 in the article); when the session expires the copy
logs "elect: expired" and campaigns again. SIGTERM / SIGINT: stop the task, resign, exit 0
(the next copy takes over at once).

    python examples/nanoping/service.py --endpoints 127.0.0.1:2379 --ttl 15 --name a
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from conch.client import Client  # noqa: E402
from conch.client.concurrency import SessionExpired  # noqa: E402
from conch.client.errors import ClientError  # noqa: E402
from conch.ha import TimingError, Timings, leader  # noqa: E402

PREFIX = "/nanoPing"


def log(msg: str) -> None:  # Go's log.Println format
    sys.stdout.write(time.strftime("%Y/%m/%d %H:%M:%S ") + msg + "\n")
    sys.stdout.flush()


class _Stop(Exception):
    pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoints", default="127.0.0.1:2379")
    p.add_argument("--ttl", type=int, default=15, help="session TTL (default 15, as the article)")
    p.add_argument("--interval", type=float, default=10.0, help="status log period (default 10)")
    p.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}", help="proposal")
    p.add_argument("--grace", type=float, default=1.0)
    p.add_argument("--margin", type=float, default=0.5)
    a = p.parse_args()
    try:
        Timings(a.ttl, a.grace, a.margin)
    except TimingError as e:
        p.error(str(e))

    stop = threading.Event()
    is_leader = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        if not is_leader.is_set():
            raise _Stop()  # abandon the campaign (its key is removed on the way out)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def ticker() -> None:  # the article's 10 s ticker
        while not stop.wait(a.interval):
            if not is_leader.is_set():
                log("[info] Service is not master")

    threading.Thread(target=ticker, daemon=True).start()
    endpoints = [e for e in a.endpoints.split(",") if e]
    with Client(endpoints, timeout=5.0) as client:
        while not stop.is_set():
            try:
                with leader(client, PREFIX, proposal=a.name, ttl=a.ttl, grace=a.grace,
                            margin=a.margin) as lead:  # fmt: skip
                    is_leader.set()
                    log("elect: success")
                    log("[info] Service master")
                    log("[info] Task start.")
                    while not stop.is_set() and not lead.cancel.wait(0.1):
                        pass  # the task runs here, guarded by lead.token
                    is_leader.clear()
                    if lead.cancel.is_set():
                        log(f"elect: expired ({lead.cancel.reason})")
            except _Stop:
                break
            except (SessionExpired, ClientError) as e:
                log(f"elect: {e}")
                if stop.wait(1.0):
                    break
    log("[info] Service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
