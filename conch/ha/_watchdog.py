"""The stop-deadline enforcer between a runner and its command (standard library only; run
as a script so it starts fast and never loads gRPC).

    python _watchdog.py FD STATUS_FD GRACE STOP_AT RUNNER_PID -- CMD ARGS...

It runs CMD as its child and reads lines from FD (the runner's pipe):
``D <monotonic>`` moves the stop deadline, ``S`` asks for a stop now; end of file (the
runner died) is a stop too, and so is SIGTERM, which Linux sends this process when the
runner dies (PR_SET_PDEATHSIG). A stop sends CMD SIGTERM, then SIGKILL ``GRACE`` seconds
later; at the stop deadline (``expires_at - margin - grace`` of the runner's lease) the same
happens, so the kill lands by ``expires_at - margin`` even if the runner is stopped
(SIGSTOP) or hung: this process is not the runner's loop. CMD itself gets SIGKILL if this
process dies (PR_SET_PDEATHSIG in preexec_fn). CLOCK_MONOTONIC is shared by all processes
of the host, so the runner's deadlines are valid here.

Exit status: CMD's, or 128 + signal number when a signal ended it; the raw status
(negative: killed by that signal) is also written to STATUS_FD as ``R <status>``.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
POLL = 0.02


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


_LIBC = _libc()
_stop_requested = False


def _on_term(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def _child_preexec() -> None:  # pragma: no cover - runs in the forked child
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.getppid() != _SELF_PID:  # we died between fork and prctl
        os._exit(137)


_SELF_PID = os.getpid()


def main(argv: list[str]) -> int:
    global _stop_requested
    if len(argv) < 7 or argv[5] != "--":
        sys.stderr.write("usage: _watchdog.py FD STATUS_FD GRACE STOP_AT RUNNER_PID -- CMD...\n")
        return 2
    fd, status_fd = int(argv[0]), int(argv[1])
    grace, stop_at, runner = float(argv[2]), float(argv[3]), int(argv[4])
    cmd = argv[6:]
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides; CMD gets its own SIGINT
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != runner:  # the runner died before prctl
        return 1
    os.set_inheritable(fd, False)
    os.set_inheritable(status_fd, False)
    if time.monotonic() >= stop_at:
        return 1
    try:
        proc = subprocess.Popen(cmd, preexec_fn=_child_preexec)
    except OSError as e:
        sys.stderr.write(f"Error: exec: {cmd[0]!r}: {e.strerror}\n")
        return 127
    buf = b""
    eof = False
    kill_at: float | None = None
    while True:
        rc = proc.poll()
        if rc is not None:
            try:
                os.write(status_fd, f"R {rc}\n".encode())
            except OSError:
                pass
            return rc if rc >= 0 else 128 - rc
        now = time.monotonic()
        if kill_at is None and (_stop_requested or now >= stop_at):
            proc.send_signal(signal.SIGTERM)
            kill_at = min(now, stop_at) + grace
        if kill_at is not None and now >= kill_at:
            proc.kill()
        timeout = POLL
        if kill_at is None:
            timeout = max(0.0, min(timeout, stop_at - now))
        if eof:
            time.sleep(timeout)
            continue
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            eof = True
            _stop_requested = True
            continue
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line == b"S":
                _stop_requested = True
            elif line.startswith(b"D "):
                stop_at = float(line[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
