"""conchctl: etcdctl's ``elect`` and ``lock`` with the same output, plus a leader-only
command runner.

    conchctl [--endpoints=127.0.0.1:2379] elect NAME PROPOSAL      # print key, value; wait
    conchctl elect -l NAME                                         # observe the leader
    conchctl elect NAME PROPOSAL -- CMD ARGS...                    # run CMD while leader
    conchctl lock NAME [CMD ARGS...]                               # print key; or run CMD

``elect ... -- CMD`` stops CMD (SIGTERM, then SIGKILL after --grace) before the lease can
expire: at (send time of the last acknowledged keepalive) + ttl - margin, enforced by a
watchdog process that outlives a stopped runner; CMD gets CONCH_ELECTION_KEY,
CONCH_ELECTION_REV (the fencing token) and CONCH_LEASE_ID. ``lock NAME CMD`` runs CMD the
same way with ETCD_LOCK_KEY / ETCD_LOCK_REV (as etcdctl) and CONCH_LOCK_KEY /
CONCH_LOCK_REV / CONCH_LEASE_ID. SIGTERM / SIGINT: stop CMD, resign / unlock, exit.

Exit status (etcdctl's where it has one): 0; 1 error ("Error: ..." on stderr); 128 bad
arguments; with CMD: CMD's status ("Error: exit status N" when not 0, as etcdctl prints),
128 + N when signal N ended it or when we stopped it on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from conch.client import Client
from conch.client.concurrency import Observer
from conch.client.errors import ClientError
from conch.ha.command import hold_and_run
from conch.ha.timing import TimingError, Timings
from conch.ha.token import FencingToken

EXIT_ERROR = 1
EXIT_BAD_ARGS = 128


class Exit(Exception):
    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _out(*lines: bytes) -> None:
    for line in lines:
        sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conchctl", description="etcd-compatible elect / lock")
    p.add_argument("--endpoints", default="127.0.0.1:2379", help="gRPC endpoints (comma list)")
    p.add_argument(
        "--command-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="timeout of each request (default 5)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("elect", help="observe and participate in leader election")
    e.add_argument("-l", "--listen", action="store_true", help="observation mode")
    e.add_argument("--ttl", type=int, default=60, help="session TTL in seconds (default 60)")
    e.add_argument(
        "--grace",
        type=float,
        default=2.0,
        help="seconds between SIGTERM and SIGKILL of CMD (default 2)",
    )
    e.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="seconds CMD is gone before the lease can expire (default 1)",
    )
    e.add_argument("args", nargs="*", metavar="NAME [PROPOSAL]")
    lk = sub.add_parser("lock", help="acquire a named lock")
    lk.add_argument("--ttl", type=int, default=10, help="session TTL in seconds (default 10)")
    lk.add_argument("--grace", type=float, default=2.0)
    lk.add_argument("--margin", type=float, default=1.0)
    lk.add_argument("name", nargs="?")
    lk.add_argument("cmd", nargs=argparse.REMAINDER)
    return p  # fmt: skip


class _Signals:
    """SIGTERM / SIGINT set ``stop``; remembers which one came."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signum = 0
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on)

    def _on(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum
        self.stop.set()


def _describe_status(rc: int) -> str:
    if rc < 0:
        name = signal.strsignal(-rc) or f"signal {-rc}"
        return f"signal: {name.lower()}"
    return f"exit status {rc}"


def _check_cmd(cmd: Sequence[str]) -> None:
    if cmd and shutil.which(cmd[0]) is None:
        raise Exit(EXIT_ERROR, f'exec: "{cmd[0]}": executable file not found in $PATH')


def _run_cmd(
    client: Any,
    name: str,
    proposal: str | None,
    cmd: Sequence[str],
    timings: Timings,
    sig: _Signals,
    kind: str,
) -> int:
    on_acquired = None
    if not cmd:

        def on_acquired(token: FencingToken) -> None:  # etcdctl: display.Get of our key
            r = client.get(token.key)
            if not r.kvs:
                raise Exit(
                    EXIT_ERROR,
                    "lock lost on init" if kind == "lock" else f"{kind}: session expired",
                )
            kv = r.kvs[0]
            _out(kv.key, kv.value)

    res = hold_and_run(
        client,
        name,
        cmd,
        proposal=proposal,
        timings=timings,
        stop=sig.stop,
        on_acquired=on_acquired,
    )
    if res.reason == "lost":
        raise Exit(EXIT_ERROR, "elect: session expired" if kind == "elect" else "session expired")
    if res.returncode is None:
        return 0
    if res.reason == "stopped" and sig.signum:
        return 128 + sig.signum
    rc = res.returncode
    if rc != 0:
        sys.stderr.write(f"Error: {_describe_status(rc)}\n")
        sys.stderr.flush()
    return rc if rc >= 0 else 128 - rc  # fmt: skip


def _observe(client: Any, name: str, sig: _Signals) -> int:
    obs = Observer(client, name.encode() + b"/")  # Go's election prefix: pfx + "/"
    failure: list[BaseException] = []

    def run() -> None:
        try:
            for kv in obs:
                if kv is not None:  # etcdctl prints leaders only
                    _out(kv.key, kv.value)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failure.append(e)
        finally:
            sig.stop.set()

    t = threading.Thread(target=run, name="conchctl-observe", daemon=True)
    t.start()
    sig.stop.wait()
    obs.close()
    t.join(timeout=5.0)
    if failure and not sig.signum:
        raise Exit(EXIT_ERROR, str(failure[0]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in args_in:
        i = args_in.index("--")
        args_in, cmd = args_in[:i], args_in[i + 1 :]
    sig = _Signals()
    try:
        code = _main(_parser().parse_args(args_in), cmd, sig)
    except Exit as e:
        if e.message:
            sys.stderr.write(f"Error: {e.message}\n")
        code = e.code
    except TimingError as e:
        sys.stderr.write(f"Error: {e}\n")
        code = EXIT_BAD_ARGS
    except (ClientError, OSError) as e:
        sys.stderr.write(f"Error: {e}\n")
        code = EXIT_ERROR
    sys.stdout.flush()
    return code


def _main(a: argparse.Namespace, cmd: list[str], sig: _Signals) -> int:
    endpoints = [e.strip() for e in a.endpoints.split(",") if e.strip()]
    if a.command == "elect":
        pos = list(a.args)
        if a.listen:
            if len(pos) != 1 or cmd:
                raise Exit(
                    EXIT_BAD_ARGS,
                    "elect takes one election name argument and an optional proposal argument",
                )
        elif len(pos) == 1 and not cmd:
            raise Exit(EXIT_BAD_ARGS, "no proposal argument but -l not set")
        elif len(pos) != 2:
            raise Exit(
                EXIT_BAD_ARGS,
                "elect takes one election name argument and an optional proposal argument",
            )
        timings = None if a.listen else Timings(a.ttl, a.grace, a.margin)
        _check_cmd(cmd)
        with Client(endpoints, timeout=a.command_timeout) as client:
            if a.listen:
                return _observe(client, pos[0], sig)
            assert timings is not None
            return _run_cmd(client, pos[0], pos[1], cmd, timings, sig, "elect")
    # lock
    if not a.name:
        raise Exit(
            EXIT_BAD_ARGS, "lock takes a lock name argument and an optional command to execute"
        )
    cmd = list(a.cmd) + cmd
    timings = Timings(a.ttl, a.grace, a.margin)
    _check_cmd(cmd)
    with Client(endpoints, timeout=a.command_timeout) as client:
        return _run_cmd(client, a.name, None, cmd, timings, sig, "lock")


if __name__ == "__main__":
    sys.exit(main())
