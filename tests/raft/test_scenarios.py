"""Golden-file scenario tests: tests/raft/testdata/*.txt, read like specs.

Each file is a sequence of blocks::

    # comments
    command arg arg key=value
    ----
    expected output

Commands (node ids are integers):
  cluster voters=1,2,3 [learners=4] [extra=4,5] [pre_vote=0|1] [check_quorum=0|1]
          [lease=1] [election=10]       start a fresh cluster
  campaign N | propose N DATA | stabilize | tick N [COUNT] | tick-election N | tick-heartbeat N
  tick-all COUNT                        tick every node COUNT times, stabilizing after each
  isolate N | cut A B | drop TYPE... (drop messages of these types) | recover | restart N
  read-index N CTX                      then ``read-states N`` prints what N learned
  transfer N TO                         ask node N to move leadership to TO
  compact N INDEX                       snapshot + compact N's storage at INDEX
  conf N v1 add|remove|learner ID       propose a v1 conf change at N
  conf N v2 [auto|implicit|explicit] add:ID remove:ID learner:ID ...  (v2; empty = leave)
  status | log N | applied N | progress N | mark | sent [TYPE...] (delivered since mark)
Output of a mutating command is "ok" or "error: <exception>". Regenerate the expected output
after an intended behaviour change with ``CONCH_RAFT_REWRITE=1`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from conch.raft import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfChangeV2,
    ConfState,
    MessageType,
    RaftError,
    ReadOnlyOption,
)
from tests.raft.rafttest import Cluster

TESTDATA = Path(__file__).parent / "testdata"
CCT = ConfChangeType


def _ids(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


class Interpreter:
    def __init__(self) -> None:
        self.c: Cluster | None = None
        self.sent_mark = 0

    @property
    def cluster(self) -> Cluster:
        assert self.c is not None, "no cluster yet"
        return self.c

    def run(self, line: str) -> str:
        args = line.split()
        cmd, rest = args[0], args[1:]
        handler = getattr(self, "cmd_" + cmd.replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown command {cmd!r}")
        try:
            out = handler(*rest)
        except RaftError as exc:
            return f"error: {type(exc).__name__}: {exc}"
        return out if out is not None else "ok"

    # --- setup ---

    def cmd_cluster(self, *kv: str) -> str:
        opts = dict(x.split("=", 1) for x in kv)
        kw: dict[str, Any] = {  # Config options of different types
            "pre_vote": opts.get("pre_vote", "1") == "1",
            "check_quorum": opts.get("check_quorum", "1") == "1",
            "election_tick": int(opts.get("election", "10")),
        }
        if opts.get("lease") == "1":
            kw["read_only_option"] = ReadOnlyOption.LeaseBased
        self.c = Cluster(voters=_ids(opts.get("voters", "1,2,3")),
                         learners=_ids(opts.get("learners", "")),
                         extra=_ids(opts.get("extra", "")), **kw)
        return self.cmd_status()

    # --- driving ---

    def cmd_campaign(self, n: str) -> None:
        self.cluster[int(n)].raw.campaign()

    def cmd_propose(self, n: str, data: str) -> None:
        self.cluster[int(n)].raw.propose(data.encode())

    def cmd_stabilize(self) -> None:
        self.cluster.stabilize()

    def cmd_tick(self, n: str, count: str = "1") -> None:
        self.cluster.tick(int(n), int(count))

    def cmd_tick_election(self, n: str) -> None:
        node = self.cluster[int(n)]
        # Enough ticks for any randomized timeout in [ET, 2ET).
        self.cluster.tick(int(n), 2 * node.raft.election_timeout)

    def cmd_tick_heartbeat(self, n: str) -> None:
        node = self.cluster[int(n)]
        self.cluster.tick(int(n), node.raft.heartbeat_timeout)

    def cmd_tick_all(self, count: str) -> None:
        self.cluster.tick_all(int(count))

    def cmd_isolate(self, n: str) -> None:
        self.cluster.isolate(int(n))

    def cmd_cut(self, a: str, b: str) -> None:
        self.cluster.cut(int(a), int(b))

    def cmd_drop(self, *types: str) -> None:
        want = {MessageType[t] for t in types}
        self.cluster.drop_filter = lambda m: m.type in want

    def cmd_recover(self) -> None:
        self.cluster.recover()

    def cmd_restart(self, n: str) -> None:
        self.cluster.restart(int(n))

    def cmd_read_index(self, n: str, ctx: str) -> None:
        self.cluster[int(n)].raw.read_index(ctx.encode())

    def cmd_read_states(self, n: str) -> str:
        node = self.cluster[int(n)]
        out = [f"index={rs.index} ctx={rs.request_ctx.decode()}" for rs in node.read_states]
        node.read_states.clear()
        return "\n".join(out) or "(none)"

    def cmd_transfer(self, n: str, to: str) -> None:
        self.cluster[int(n)].raw.transfer_leader(int(to))

    def cmd_compact(self, n: str, index: str) -> None:
        node = self.cluster[int(n)]
        i = int(index)
        node.storage.create_snapshot(i, node.conf_state, b"snap@%d" % i)
        node.storage.compact(i)

    def cmd_conf(self, n: str, version: str, *changes: str) -> None:
        raw = self.cluster[int(n)].raw
        kinds = {"add": CCT.ConfChangeAddNode, "remove": CCT.ConfChangeRemoveNode,
                 "learner": CCT.ConfChangeAddLearnerNode}
        if version == "v1":
            raw.propose_conf_change(ConfChange(kinds[changes[0]], int(changes[1])))
            return
        transition = ConfChangeTransition.Auto
        singles = []
        for ch in changes:
            if ch in ("auto", "implicit", "explicit"):
                transition = {"auto": ConfChangeTransition.Auto,
                              "implicit": ConfChangeTransition.JointImplicit,
                              "explicit": ConfChangeTransition.JointExplicit}[ch]
                continue
            kind, node_id = ch.split(":")
            singles.append(ConfChangeSingle(kinds[kind], int(node_id)))
        raw.propose_conf_change(ConfChangeV2(transition=transition, changes=singles))

    # --- inspection ---

    def cmd_status(self) -> str:
        lines = []
        for i, n in sorted(self.cluster.nodes.items()):
            r = n.raft
            lines.append(
                f"{i}: {r.state.name} term={r.term} lead={r.lead} "
                f"last={r.raft_log.last_index()} commit={r.raft_log.committed} "
                f"applied={r.raft_log.applied} {_conf(n.conf_state)}"
            )
        return "\n".join(lines)

    def cmd_log(self, n: str) -> str:
        log = self.cluster[int(n)].raft.raft_log
        ents = log.all_entries()
        first = log.first_index()
        head = f"first={first}" + (" (compacted)" if first > 1 else "")
        body = [f"{e.index}/{e.term} {_entry_text(e)}" for e in ents]
        return "\n".join([head, *body])

    def cmd_applied(self, n: str) -> str:
        return " ".join(d.decode() for d in self.cluster[int(n)].applied_data()) or "(none)"

    def cmd_progress(self, n: str) -> str:
        r = self.cluster[int(n)].raft
        return "\n".join(f"{i}: {pr!r}" for i, pr in sorted(r.trk.progress.items()))

    def cmd_mark(self) -> None:
        """Forget the messages delivered so far (``sent`` shows only later ones)."""
        self.sent_mark = len(self.cluster.trace)

    def cmd_sent(self, *types: str) -> str:
        """Messages delivered since the last ``sent`` (optionally only the given types)."""
        trace = self.cluster.trace[self.sent_mark:]
        self.sent_mark = len(self.cluster.trace)
        want = {MessageType[t] for t in types}
        out = []
        for m in trace:
            t = MessageType(m.type)
            if want and t not in want:
                continue
            extra = ""
            if m.reject:
                extra = " reject"
            if m.entries and t in (MessageType.MsgApp, MessageType.MsgProp):
                extra += f" entries={len(m.entries)}"
            if m.snapshot is not None:
                extra += f" snapshot@{m.snapshot.metadata.index}"
            out.append(f"{m.frm}->{m.to} {t.name} term={m.term}{extra}")
        return "\n".join(out) or "(none)"


def _conf(cs: ConfState) -> str:
    s = "voters=" + ",".join(map(str, cs.voters))
    if cs.voters_outgoing:
        s += "&&" + ",".join(map(str, cs.voters_outgoing))
    if cs.learners:
        s += " learners=" + ",".join(map(str, cs.learners))
    if cs.learners_next:
        s += " learners_next=" + ",".join(map(str, cs.learners_next))
    return s


def _entry_text(e: object) -> str:
    from conch.raft import Entry, EntryType, conf_change_from_entry

    assert isinstance(e, Entry)
    if e.type == EntryType.EntryNormal:
        return e.data.decode() if e.data else "(empty)"
    return repr(conf_change_from_entry(e))


def run_file(path: Path) -> tuple[str, str]:
    """(expected, actual) full file texts."""
    text = path.read_text()
    interp = Interpreter()
    out_blocks: list[str] = []
    blocks = text.split("\n\n")
    for block in blocks:
        lines = block.strip("\n").split("\n")
        if not block.strip():
            continue
        comments = [ln for ln in lines if ln.startswith("#")]
        rest = [ln for ln in lines if not ln.startswith("#")]
        if not rest:
            out_blocks.append("\n".join(comments))
            continue
        cmd = rest[0]
        got = interp.run(cmd)
        out_blocks.append("\n".join([*comments, cmd, "----", got]))
    return text, "\n\n".join(out_blocks) + "\n"


FILES = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path) -> None:
    expected, actual = run_file(path)
    if os.environ.get("CONCH_RAFT_REWRITE") == "1":
        path.write_text(actual)
        return
    assert actual == expected, f"{path.name} differs; rerun with CONCH_RAFT_REWRITE=1 to see"
