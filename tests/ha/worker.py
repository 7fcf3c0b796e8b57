"""The leader-only command of the ha tests (run by ``conchctl elect ... -- python worker.py``).

Appends ``start REV PID T`` to LOG when started and ``stop REV PID T`` on SIGTERM (T is
CLOCK_MONOTONIC, shared by all processes of the host). With ``--fenced ENDPOINT`` it also
writes its token to the key ``fenced`` every 20 ms in a txn guarded by the leader key's
create revision, logging ``write REV ok|rejected T``.
"""

from __future__ import annotations

import os
import signal
import sys
import time

stopping = False


def log(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line} {time.monotonic():.6f}\n".encode())
    finally:
        os.close(fd)


def main() -> int:
    global stopping
    path = sys.argv[1]
    fenced = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--fenced" else None
    rev = os.environ["CONCH_ELECTION_REV"]
    key = os.environ["CONCH_ELECTION_KEY"].encode()

    def on_term(signum: int, frame: object) -> None:
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    client = None
    if fenced:
        from conch.client import Client, Compare, Op

        client = Client([fenced], timeout=2.0)
    log(path, f"start {rev} {os.getpid()}")
    while not stopping:
        if client is not None:
            try:
                r = client.txn(
                    [Compare.create(key) == int(rev)], [Op.put(b"fenced", rev.encode())], []
                )
                if not stopping:
                    log(path, f"write {rev} {'ok' if r.succeeded else 'rejected'}")
            except Exception as e:  # noqa: BLE001 - a failed write is just not a write
                log(path, f"write {rev} error:{type(e).__name__}")
        time.sleep(0.02)
    log(path, f"stop {rev} {os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
