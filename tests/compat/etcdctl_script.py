"""Running a scripted etcdctl session against one server, and normalising its transcript.

The scripts themselves (tables of steps) live in ``test_etcdctl_diff.py``. This module
knows how to run the three kinds of step and how to normalise what etcdctl printed so two
transcripts from two different servers can be compared exactly.

Normalised away (and only these): cluster/member IDs, raft term and raft indexes, lease
IDs (mapped to L1, L2, ... in order of first appearance, hex and decimal forms), db sizes,
the server version in ``endpoint status``, endpoint addresses, timings (``took``), the
remaining TTL of a lease when it is within 3 s below the granted TTL, the volatile fields of
the Go client's warning log lines (timestamp, caller, random target, attempt number) and
the order of keys in ``lease timetolive --keys`` (etcd prints them in Go map order).
Revisions, values, counts, ordering of results, exit codes and error texts are compared as
printed.
"""

from __future__ import annotations

import json
import queue
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from devkit import harness

STEP_TIMEOUT = 20.0  # every etcdctl invocation is bounded by this
UNKNOWN_LEASE = "1234"  # hex lease id used on purpose in error cases; never mapped


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Cmd:
    """``etcdctl ARGS`` (shell-split; ``{L1}`` etc. become this run's lease ids)."""

    args: str
    input: str | None = None
    name: str = ""
    binary: bool = False  # -w protobuf: compare decoded messages

    def label(self) -> str:
        return self.name or self.args + (" <<< " + repr(self.input) if self.input else "")


@dataclass(frozen=True)
class Watch:
    """Foreground ``etcdctl ARGS`` (a watch): read stdout until ``lines`` lines were printed
    (then ``grace`` more seconds for unexpected extras), the process exits, or ``limit``
    seconds pass; then kill it by pid."""

    args: str
    lines: int
    limit: float = 5.0
    grace: float = 0.3
    name: str = ""

    def label(self) -> str:
        return self.name or f"{self.args}  (until {self.lines} lines / {self.limit}s)"


@dataclass(frozen=True)
class WatchStart:
    """Start a background watch ``wid``; its output is recorded by ``WatchCollect(wid)``."""

    wid: str
    args: str
    lines: int
    limit: float = 8.0
    grace: float = 0.3

    def label(self) -> str:
        return f"[{self.wid}] start: {self.args}"


@dataclass(frozen=True)
class WatchCollect:
    wid: str

    def label(self) -> str:
        return f"[{self.wid}] collect"


Step = Cmd | Watch | WatchStart | WatchCollect


@dataclass
class StepResult:
    label: str
    rc: int | str | None
    stdout: str
    stderr: str

    def render(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


# --------------------------------------------------------------------------- watch processes


class WatchProc:
    """An etcdctl process whose stdout lines are collected by a reader thread."""

    def __init__(self, endpoint: str, args: list[str], lines: int, limit: float, grace: float):
        self.want, self.limit, self.grace = lines, limit, grace
        self.proc = harness.etcdctl_popen(endpoint, *args)
        self.started = time.monotonic()
        self.out: list[str] = []
        self.err: list[str] = []
        self.q: queue.Queue[str | None] = queue.Queue()
        self.t_out = threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True)
        self.t_err = threading.Thread(
            target=self._pump, args=(self.proc.stderr, False), daemon=True
        )
        self.t_out.start()
        self.t_err.start()

    def _pump(self, stream: IO[str], is_out: bool) -> None:
        for line in stream:
            if is_out:
                self.q.put(line)
            else:
                self.err.append(line)
        if is_out:
            self.q.put(None)

    def finish(self) -> StepResult:
        deadline = self.started + self.limit
        eof = False
        while len(self.out) < self.want and not eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self.q.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                eof = True
            else:
                self.out.append(item)
        if not eof and len(self.out) >= self.want:  # catch unexpected extra output
            grace_end = time.monotonic() + self.grace
            while (remaining := grace_end - time.monotonic()) > 0:
                try:
                    item = self.q.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is None:
                    eof = True
                    break
                self.out.append(item)
        killed = False
        if self.proc.poll() is None:
            # exit status is only meaningful if etcdctl exited by itself
            try:
                self.proc.wait(0 if not eof else 2)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # only the pid we started
                killed = True
        self.proc.wait(10)
        self.t_out.join(5)
        self.t_err.join(5)
        while True:  # anything printed between our last read and the kill
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.out.append(item)
        rc: int | str = "killed" if killed else self.proc.returncode
        return StepResult("", rc, "".join(self.out), "".join(self.err))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --------------------------------------------------------------------------- normaliser

_ENDPOINT = re.compile(r"127\.0\.0\.1:\d+|localhost:\d+|\[::1\]:\d+")
_DURATION = r"[0-9.]+(?:ns|µs|us|ms|s|m|h)(?:[0-9.]+(?:ns|µs|us|ms|s))*"


class Normaliser:
    """Per-run state: which lease / member / cluster ids were seen, in order."""

    def __init__(self) -> None:
        self.leases: dict[int, str] = {}
        self.members: dict[int, str] = {}
        self.clusters: dict[int, str] = {}
        self.never_map = {int(UNKNOWN_LEASE, 16)}

    # -- id maps -------------------------------------------------------------------
    def _label(self, table: dict[int, str], prefix: str, value: int) -> str:
        if value == 0:
            return "0"
        if value not in table:
            table[value] = f"<{prefix}{len(table) + 1}>"
        return table[value]

    def lease(self, value: int) -> str:
        if value in self.never_map or value == 0:
            return f"{value:016x}" if value else "0"
        return self._label(self.leases, "L", value)

    def lease_hex(self, label: str) -> str:
        """The hex id of lease ``label`` ("L1") in this run, for substitution into args."""
        for v, lab in self.leases.items():
            if lab == f"<{label}>":
                return f"{v:x}"
        return f"no-such-lease-{label}"

    def substitute(self, args: str) -> str:
        return re.sub(r"\{(L\d+)\}", lambda m: self.lease_hex(m.group(1)), args)

    # -- text ----------------------------------------------------------------------
    def text(self, s: str, cmd: str) -> str:
        s = self._stderr_json_lines(s)
        s = self._tables(s)
        s = self._status_simple(s, cmd)
        s = _ENDPOINT.sub("<EP>", s)
        # timings
        s = re.sub(r"took = " + _DURATION, "took = <T>", s)
        s = re.sub(r'"took":"[^"]*"', '"took":"<T>"', s)
        s = re.sub(r'"Took" : \S+', '"Took" : <T>', s)
        # header ids (0 stays 0: nested txn headers carry zeros)
        s = re.sub(
            r'("cluster_id":|"ClusterID" : )(\d+)',
            lambda m: m.group(1) + self._label(self.clusters, "C", int(m.group(2))),
            s,
        )
        s = re.sub(
            r'("member_id":|"MemberID" : |"leader":|"Leader" : )(\d+)',
            lambda m: m.group(1) + self._label(self.members, "M", int(m.group(2))),
            s,
        )
        s = re.sub(
            r'("raft_term":|"RaftTerm" : |"raftTerm":)(\d+)',
            lambda m: m.group(1) + ("0" if m.group(2) == "0" else "<TERM>"),
            s,
        )
        # endpoint status specifics
        s = re.sub(r'("raftIndex"|"raftAppliedIndex"|"dbSize"|"dbSizeInUse"):\d+', r"\1:<N>", s)
        s = re.sub(r'("RaftIndex"|"RaftAppliedIndex"|"DBSize"|"DBSizeInUse") : \d+', r"\1 : <N>", s)
        s = re.sub(r'"version":"[^"]*"', '"version":"<VERSION>"', s)
        s = re.sub(r'"Version" : "[^"]*"', '"Version" : "<VERSION>"', s)
        # member ids outside headers (member list)
        if cmd.startswith("member"):
            s = re.sub(
                r'("ID":)(\d+)',
                lambda m: m.group(1) + self._label(self.members, "M", int(m.group(2))),
                s,
            )
            s = re.sub(
                r"^([0-9a-f]+), ",
                lambda m: self._label(self.members, "M", int(m.group(1), 16)) + ", ",
                s,
                flags=re.M,
            )
            return s
        # leases
        s = self._leases(s, cmd)
        s = self._ttls(s)
        return s

    def _stderr_json_lines(self, s: str) -> str:
        out = []
        for line in s.splitlines(keepends=True):
            stripped = line.strip()
            if stripped.startswith("{") and '"level"' in stripped and '"ts"' in stripped:
                try:
                    obj = json.loads(stripped)
                except ValueError:
                    out.append(line)
                    continue
                keep = {k: obj[k] for k in ("level", "msg", "error") if k in obj}
                out.append("<client-log> " + json.dumps(keep, sort_keys=True) + "\n")
            else:
                out.append(line)
        return "".join(out)

    _TABLE_VOLATILE = {
        "ENDPOINT": "<EP>",
        "VERSION": "<VERSION>",
        "DB SIZE": "<SIZE>",
        "RAFT TERM": "<TERM>",
        "RAFT INDEX": "<N>",
        "RAFT APPLIED INDEX": "<N>",
        "TOOK": "<T>",
    }

    def _tables(self, s: str) -> str:
        """Re-render ASCII tables cell by cell (column widths depend on the content)."""
        out: list[str] = []
        header: list[str] | None = None
        for line in s.splitlines(keepends=True):
            if line.startswith("+-"):
                out.append("+-+\n")
                continue
            if line.startswith("|"):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if header is None:
                    header = cells
                else:
                    cells = [self._table_cell(h, c) for h, c in zip(header, cells, strict=False)]
                out.append("| " + " | ".join(cells) + " |\n")
                continue
            header = None
            out.append(line)
        return "".join(out)

    def _table_cell(self, col: str, value: str) -> str:
        if col == "ID" and re.fullmatch(r"[0-9a-f]+", value):
            return self._label(self.members, "M", int(value, 16))
        if col in self._TABLE_VOLATILE and value:
            return self._TABLE_VOLATILE[col]
        return value

    def _status_simple(self, s: str, cmd: str) -> str:
        """``endpoint status`` simple output: 'EP, ID, VERSION, SIZE, LEADER, LEARNER,
        TERM, INDEX, APPLIED, ERRORS'."""
        if not cmd.startswith("endpoint status") or "-w" in cmd or "--write-out" in cmd:
            return s
        out = []
        for line in s.splitlines(keepends=True):
            parts = line.rstrip("\n").split(", ")
            if len(parts) >= 9 and re.fullmatch(r"[0-9a-f]+", parts[1]):
                parts[0] = "<EP>"
                parts[1] = self._label(self.members, "M", int(parts[1], 16))
                parts[2] = "<VERSION>"
                parts[3] = "<SIZE>"
                parts[6] = "<TERM>"
                parts[7] = "<N>"
                parts[8] = "<N>"
                line = ", ".join(parts) + "\n"
            out.append(line)
        return "".join(out)

    def _leases(self, s: str, cmd: str) -> str:
        # hex: "lease <16 hex>" in simple output, and `lease list` lines
        s = re.sub(
            r"\blease ([0-9a-f]{16})\b", lambda m: "lease " + self.lease(int(m.group(1), 16)), s
        )
        if cmd.startswith("lease list") and "-w" not in cmd:
            s = re.sub(
                r"^([0-9a-f]{16})$",
                lambda m: self.lease(int(m.group(1), 16)),
                s,
                flags=re.M,
            )
        # decimal: json / fields contexts that carry lease ids
        s = re.sub(
            r'("ID":|"id":|"lease":|"ID" : |"Lease" : )(\d+)',
            lambda m: m.group(1) + self.lease(int(m.group(2))),
            s,
        )
        # a known lease id anywhere else in its 16-digit hex form (e.g. an error text);
        # shorter forms are not replaced: a small id like 1 would collide with revisions
        for value, label in self.leases.items():
            s = re.sub(rf"\b{value:016x}\b", label, s)
        return s

    def _ttls(self, s: str) -> str:
        def near(remaining: int, granted: int) -> bool:
            return granted - 3 <= remaining <= granted and granted > 0

        def simple(m: re.Match[str]) -> str:
            g, r = int(m.group(1)), int(m.group(2))
            rem = f"<~{g}s>" if near(r, g) else f"{r}s"
            return f"granted with TTL({g}s), remaining({rem})"

        s = re.sub(r"granted with TTL\((\d+)s\), remaining\((-?\d+)s\)", simple, s)

        def js(m: re.Match[str]) -> str:
            r, g = int(m.group(1)), int(m.group(2))
            return f'"ttl":{f"<~{g}>" if near(r, g) else r},"granted-ttl":{g}'

        s = re.sub(r'"ttl":(-?\d+),"granted-ttl":(\d+)', js, s)

        def fields(m: re.Match[str]) -> str:
            r, g = int(m.group(1)), int(m.group(2))
            return f'"TTL" : {f"<~{g}>" if near(r, g) else r}\n"GrantedTTL" : {g}'

        s = re.sub(r'"TTL" : (-?\d+)\n"GrantedTTL" : (\d+)', fields, s)
        # attached keys: Go map order on the server -> sort
        s = re.sub(
            r"attached keys\(\[([^\]]*)\]\)",
            lambda m: "attached keys([" + " ".join(sorted(m.group(1).split())) + "])",
            s,
        )
        s = re.sub(
            r'"keys":\[([^\]]*)\]',
            lambda m: '"keys":[' + ",".join(sorted(filter(None, m.group(1).split(",")))) + "]",
            s,
        )
        if '"GrantedTTL"' in s:  # -w fields of timetolive: one "Key" line per key
            s = re.sub(
                r'((?:^"Key" : .*\n)+)',
                lambda m: "".join(sorted(m.group(1).splitlines(keepends=True))),
                s,
                flags=re.M,
            )
        return s

    # -- protobuf ------------------------------------------------------------------
    def protobuf(self, data: bytes, args: str) -> str:
        """Decode ``-w protobuf`` output of ``get`` as a RangeResponse (conch's generated
        etcd schema), clear cluster/member/term, and print it in text format."""
        try:
            from google.protobuf import text_format

            from conch.proto.etcdserverpb import rpc_pb2
        except ImportError as e:  # pragma: no cover
            return f"<protobuf decoder unavailable: {e}>\n"
        if not args.startswith("get "):
            return f"<no decoder for: {args}>\n"
        msg = rpc_pb2.RangeResponse()
        try:
            msg.ParseFromString(data)
        except Exception as e:
            return f"<undecodable protobuf ({e}): {data!r}>\n"
        if msg.header.cluster_id:
            msg.header.cluster_id = 1
        if msg.header.member_id:
            msg.header.member_id = 1
        if msg.header.raft_term:
            msg.header.raft_term = 1
        return text_format.MessageToString(msg, as_one_line=True) + "\n"


# --------------------------------------------------------------------------- runner


@dataclass
class Transcript:
    kind: str
    results: list[StepResult] = field(default_factory=list)


def run_script(server: harness.ServerProcess, steps: list[Step]) -> Transcript:
    norm = Normaliser()
    tr = Transcript(server.kind)
    watchers: dict[str, WatchProc] = {}
    try:
        for step in steps:
            if not server.is_running():  # don't wait for timeouts against a dead server
                rc = server.proc.returncode if server.proc else None
                tail = (
                    ""
                    if any(r.rc == "server-exited" for r in tr.results)
                    else ("\n" + server.log_tail(40) + "\n")
                )
                tr.results.append(
                    StepResult(step.label(), "server-exited", "", f"server rc={rc}{tail}")
                )
                continue
            tr.results.append(_run_step(server, step, norm, watchers))
    finally:
        for w in watchers.values():
            w.kill()
    return tr


def _run_step(
    server: harness.ServerProcess,
    step: Step,
    norm: Normaliser,
    watchers: dict[str, WatchProc],
) -> StepResult:
    label = step.label()
    if isinstance(step, Cmd):
        args = norm.substitute(step.args)
        argv = shlex.split(args)
        try:
            if step.binary:
                cp = harness.etcdctl(server, *argv, timeout=STEP_TIMEOUT, text=False)
                out = norm.protobuf(cp.stdout, args)
                err = norm.text(cp.stderr.decode(errors="replace"), args)
            else:
                cp = harness.etcdctl(server, *argv, input=step.input, timeout=STEP_TIMEOUT)
                out, err = norm.text(cp.stdout, args), norm.text(cp.stderr, args)
            return StepResult(label, cp.returncode, out, err)
        except subprocess.TimeoutExpired as e:
            return StepResult(label, f"timeout after {STEP_TIMEOUT}s", str(e.stdout), "")
    if isinstance(step, Watch):
        args = norm.substitute(step.args)
        w = WatchProc(server.endpoint, shlex.split(args), step.lines, step.limit, step.grace)
        r = w.finish()
        return StepResult(label, r.rc, norm.text(r.stdout, args), norm.text(r.stderr, args))
    if isinstance(step, WatchStart):
        args = norm.substitute(step.args)
        watchers[step.wid] = WatchProc(
            server.endpoint, shlex.split(args), step.lines, step.limit, step.grace
        )
        return StepResult(label, 0, "", "")
    if isinstance(step, WatchCollect):
        w = watchers.pop(step.wid)
        r = w.finish()
        return StepResult(label, r.rc, norm.text(r.stdout, "watch"), norm.text(r.stderr, "watch"))
    raise TypeError(step)


def compare(a: Transcript, b: Transcript) -> str | None:
    """None if equal; else a readable report: every differing step by name, and the first
    one in full with both outputs (later steps may differ only as a consequence)."""
    import difflib

    diffs = [
        (i, ra, rb)
        for i, (ra, rb) in enumerate(zip(a.results, b.results, strict=True))
        if (ra.rc, ra.stdout, ra.stderr) != (rb.rc, rb.stdout, rb.stderr)
    ]
    if not diffs:
        return None
    lines = [f"{len(diffs)} of {len(a.results)} steps differ ({a.kind} vs {b.kind}):"]
    for i, ra, _ in diffs:
        lines.append(f"  step {i + 1}: {ra.label}")
    i, ra, rb = diffs[0]
    lines += [
        "",
        f"first differing step {i + 1}: etcdctl {ra.label}",
        f"===== {a.kind}:",
        ra.render(),
        f"===== {b.kind}:",
        rb.render(),
        "===== unified diff:",
    ]
    lines += difflib.unified_diff(
        ra.render().splitlines(), rb.render().splitlines(), a.kind, b.kind, lineterm=""
    )
    return "\n".join(lines)


def dump(tr: Transcript) -> str:
    return "\n".join(f"### step {i + 1}: {r.label}\n{r.render()}" for i, r in enumerate(tr.results))
