"""Safety and failover of ``conchctl elect NAME PROPOSAL -- CMD`` on conch (issue 5).

TTL 3 s, grace 0.5 s, margin 0.5 s: a command is asked to stop at expires_at - 1 s and is
gone by expires_at - 0.5 s, where expires_at = send time of the last acknowledged keepalive
+ TTL. The worker logs start/stop lines with CLOCK_MONOTONIC times to one shared file.
"""

from __future__ import annotations

import signal
from functools import partial
from pathlib import Path
from typing import Any

from conch.client import Client, Compare, Op
from devkit.harness import ServerProcess
from devkit.polling import poll
from tests.ha.conftest import (
    GRACE,
    TTL,
    Runner,
    StartRunner,
    check_no_overlap,
    leader_value,
    now,
    pid_alive,
    read_log,
)

NAME = "safety"


def _started(log: Path, after: int) -> Any:  # tuple[int, int, float] | None
    """(rev, worker pid, t) of the first start line with a token > after."""
    for ln in read_log(log):
        if ln.kind == "start" and ln.rev > after:
            return ln.rev, int(ln.arg), ln.t
    return None


def _dead(pid: int) -> bool:
    return not pid_alive(pid)


def _stopped(log: Path, rev: int) -> Any:  # float | None
    for ln in read_log(log):
        if ln.kind == "stop" and ln.rev == rev:
            return ln.t
    return None


def _leader_runner(client: Client, runners: dict[str, Runner], rev: int) -> Runner:
    lv = poll(lambda: leader_value(client, NAME), 5, "a leader key")
    assert lv is not None
    value, create_rev = lv
    assert create_rev == rev, "the running command's token is the leader key's create revision"
    return runners[value.decode()]


def test_sigkill_leader_repeatedly(client: Client, runners: StartRunner, log_path: Path) -> None:
    rs = {f"r{i}": runners(NAME, f"r{i}") for i in range(5)}
    last = 0
    failovers = []
    for _ in range(4):
        rev, wpid, _t = poll(partial(_started, log_path, last), TTL + 5, "a leader")
        victim = _leader_runner(client, rs, rev)
        t_kill = now()
        victim.signal(signal.SIGKILL)
        # the command never outlives the runner by more than the grace period...
        poll(partial(_dead, wpid), GRACE + 1.0, "the command to die")
        # ...and it got SIGTERM first (the watchdog's stop, on the runner's death)
        stop_t = poll(partial(_stopped, log_path, rev), 1.0, "its stop line")
        assert stop_t - t_kill < GRACE + 0.5
        nxt = poll(partial(_started, log_path, rev), TTL + 2.0, "a successor")
        failovers.append(nxt[2] - t_kill)
        last = rev
    tokens = check_no_overlap(read_log(log_path))
    assert len(tokens) == 5
    print(f"SIGKILL failover times: {[f'{x:.2f}' for x in failovers]}")
    assert max(failovers) < TTL + 1.0


def test_sigstop_runner_only(client: Client, runners: StartRunner, log_path: Path) -> None:
    rs = {f"r{i}": runners(NAME, f"r{i}") for i in range(3)}
    rev, wpid, _ = poll(lambda: _started(log_path, 0), TTL + 5, "a leader")
    victim = _leader_runner(client, rs, rev)
    t_stop = now()
    victim.signal(signal.SIGSTOP)
    try:
        # the watchdog (not the stopped runner) stops the command at its deadline
        stop_t = poll(lambda: _stopped(log_path, rev), TTL + 1, "the command to be stopped")
        nxt = poll(lambda: _started(log_path, rev), TTL + 3, "a successor")
        assert stop_t < nxt[2], "the command stopped before the successor started"
        assert stop_t - t_stop < TTL, "stopped before the lease could expire"
        poll(lambda: not pid_alive(wpid), GRACE + 1.0, "the command to be gone")
    finally:
        victim.signal(signal.SIGCONT)
    # resumed, the old runner notices it lost the lease and exits with etcdctl's error
    rc = victim.proc.wait(10)
    assert victim.proc.stderr is not None
    err = victim.proc.stderr.read().decode()
    assert rc == 1 and "Error: elect: session expired" in err, (rc, err)
    check_no_overlap(read_log(log_path))


def _history(client: Client, key: bytes) -> list[bytes]:
    """Every value ever put at ``key`` (no compaction in these tests), in order."""
    head = client.get(key).header.revision
    out: list[bytes] = []
    with client.watch(key, start_revision=1) as w:
        seen = 0
        while seen < head:
            wr = w.get(timeout=5)
            for ev in wr.events:
                out.append(ev.kv.value)
                seen = ev.kv.mod_revision
            if not wr.events:
                seen = max(seen, wr.header.revision)
    return out


def _wrote_ok(log: Path, rev: int) -> bool:
    return any(ln.kind == "write" and ln.rev == rev and ln.arg == "ok" for ln in read_log(log))


def test_sigstop_group_fencing(
    conch: ServerProcess, client: Client, runners: StartRunner, log_path: Path
) -> None:
    ep = conch.endpoint
    rs = {f"r{i}": runners(NAME, f"r{i}", "--fenced", ep) for i in range(2)}
    rev, _wpid, _ = poll(lambda: _started(log_path, 0), TTL + 5, "a leader")
    poll(lambda: any(ln.kind == "write" and ln.arg == "ok" for ln in read_log(log_path)),
         5, "a fenced write by the first leader")  # fmt: skip
    victim = _leader_runner(client, rs, rev)
    kvs = client.get(NAME.encode() + b"/", prefix=True).kvs
    old_key = [kv.key for kv in kvs if kv.create_revision == rev]
    victim.signal_group(signal.SIGSTOP)
    try:
        nxt = poll(lambda: _started(log_path, rev), 2 * TTL + 3, "a successor")
        poll(lambda: _wrote_ok(log_path, nxt[0]), 5, "a fenced write by the successor")
        # a write with the paused leader's token, as it would send it on waking: rejected
        r = client.txn([Compare.create(old_key[0]) == rev], [Op.put(b"fenced", b"stale")], [])
        assert not r.succeeded
    finally:
        victim.signal_group(signal.SIGCONT)
    victim.proc.wait(10)
    lines = read_log(log_path)
    # after resuming, every write the old leader made was rejected
    succ_first_ok = min(ln.t for ln in lines if ln.kind == "write" and ln.rev == nxt[0])
    late = [ln for ln in lines if ln.kind == "write" and ln.rev == rev and ln.t > succ_first_ok]
    assert all(ln.arg != "ok" for ln in late), late
    # the protected key only ever saw non-decreasing tokens
    values = [int(v) for v in _history(client, b"fenced")]
    assert values == sorted(values) and values[-1] == nxt[0], values
    starts = [ln.rev for ln in lines if ln.kind == "start"]
    assert starts == sorted(set(starts)), "tokens strictly increase"


def test_failover_times(client: Client, runners: StartRunner, log_path: Path) -> None:
    rs = {f"r{i}": runners(NAME, f"r{i}") for i in range(3)}
    rev, _, _ = poll(lambda: _started(log_path, 0), TTL + 5, "a leader")
    # graceful: SIGTERM -> the command stops, the runner resigns, the next one starts
    victim = _leader_runner(client, rs, rev)
    t0 = now()
    victim.signal(signal.SIGTERM)
    nxt = poll(lambda: _started(log_path, rev), 2.0, "a successor after SIGTERM")
    graceful = nxt[2] - t0
    assert victim.proc.wait(5) == 128 + signal.SIGTERM
    # SIGKILL: the successor waits for the lease to expire
    victim = _leader_runner(client, rs, nxt[0])
    t1 = now()
    victim.signal(signal.SIGKILL)
    nxt2 = poll(lambda: _started(log_path, nxt[0]), TTL + 3, "a successor after SIGKILL")
    killed = nxt2[2] - t1
    print(f"failover: SIGTERM {graceful:.3f}s, SIGKILL {killed:.3f}s (TTL {TTL}s)")
    assert graceful < 1.0
    assert killed < TTL + 1.0
    check_no_overlap(read_log(log_path))
