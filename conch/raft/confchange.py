"""Configuration changes: compute the next configuration from the current one.

Three ways to change, as in etcd:
- ``simple``: at most one voter added or removed (learner changes are free). Safe without joint
  consensus because any majority of the old and of the new voter set intersect.
- ``enter_joint``: the incoming voter set becomes the result of the changes, the outgoing set is
  the old voters; decisions need both majorities until ``leave_joint``.
- ``leave_joint``: drop the outgoing set; demoted voters (``learners_next``) become learners.

The changer never mutates the tracker it reads: it returns a new Config and Progress map, and
raft switches to them when the conf-change entry is *applied*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from conch.raft.errors import ConfChangeError
from conch.raft.tracker import Inflights, JointConfig, Progress, ProgressTracker
from conch.raft.types import ConfChangeSingle, ConfChangeType, ConfState


@dataclass(slots=True)
class Config:
    voters: JointConfig = field(default_factory=JointConfig)
    learners: set[int] = field(default_factory=set)
    learners_next: set[int] = field(default_factory=set)
    auto_leave: bool = False

    def clone(self) -> Config:
        return Config(self.voters.copy(), set(self.learners), set(self.learners_next),
                      self.auto_leave)


def config_of(trk: ProgressTracker) -> Config:
    return Config(trk.voters.copy(), set(trk.learners), set(trk.learners_next), trk.auto_leave)


def install(trk: ProgressTracker, cfg: Config, prs: dict[int, Progress]) -> None:
    trk.voters = cfg.voters
    trk.learners = cfg.learners
    trk.learners_next = cfg.learners_next
    trk.auto_leave = cfg.auto_leave
    trk.progress = prs


class Changer:
    def __init__(self, trk: ProgressTracker, last_index: int) -> None:
        self.trk = trk
        self.last_index = last_index

    def _copy(self) -> tuple[Config, dict[int, Progress]]:
        cfg = config_of(self.trk)
        prs: dict[int, Progress] = {}
        for i, pr in self.trk.progress.items():
            # Progress objects are shared with the live tracker except the fields we flip
            # (is_learner), so copy them shallowly.
            cp = Progress(pr.match, pr.next, pr.inflights, pr.is_learner, pr.recent_active)
            cp.state = pr.state
            cp.pending_snapshot = pr.pending_snapshot
            cp.msg_app_flow_paused = pr.msg_app_flow_paused
            prs[i] = cp
        return cfg, prs

    def enter_joint(
        self, auto_leave: bool, ccs: Sequence[ConfChangeSingle]
    ) -> tuple[Config, dict[int, Progress]]:
        cfg, prs = self._copy()
        if cfg.voters.outgoing:
            raise ConfChangeError("config is already joint")
        if not cfg.voters.incoming:
            raise ConfChangeError("can't make a zero-voter config joint")
        cfg.voters.outgoing = set(cfg.voters.incoming)
        self._apply(cfg, prs, ccs)
        cfg.auto_leave = auto_leave
        _check_invariants(cfg, prs)
        return cfg, prs

    def leave_joint(self) -> tuple[Config, dict[int, Progress]]:
        cfg, prs = self._copy()
        if not cfg.voters.outgoing:
            raise ConfChangeError("can't leave a non-joint config")
        for node in cfg.learners_next:
            cfg.learners.add(node)
            prs[node].is_learner = True
        cfg.learners_next = set()
        for node in cfg.voters.outgoing:
            if node not in cfg.voters.incoming and node not in cfg.learners:
                del prs[node]
        cfg.voters.outgoing = set()
        cfg.auto_leave = False
        _check_invariants(cfg, prs)
        return cfg, prs

    def simple(self, ccs: Sequence[ConfChangeSingle]) -> tuple[Config, dict[int, Progress]]:
        cfg, prs = self._copy()
        if cfg.voters.outgoing:
            raise ConfChangeError("can't apply simple config change in joint config")
        self._apply(cfg, prs, ccs)
        if len(self.trk.voters.incoming ^ cfg.voters.incoming) > 1:
            raise ConfChangeError("more than one voter changed without entering joint config")
        _check_invariants(cfg, prs)
        return cfg, prs

    def _apply(
        self, cfg: Config, prs: dict[int, Progress], ccs: Sequence[ConfChangeSingle]
    ) -> None:
        for cc in ccs:
            if cc.node_id == 0:
                continue  # etcd replaces invalid changes by no-ops with node id zero
            if cc.type == ConfChangeType.ConfChangeAddNode:
                self._make_voter(cfg, prs, cc.node_id)
            elif cc.type == ConfChangeType.ConfChangeAddLearnerNode:
                self._make_learner(cfg, prs, cc.node_id)
            elif cc.type == ConfChangeType.ConfChangeRemoveNode:
                self._remove(cfg, prs, cc.node_id)
            elif cc.type == ConfChangeType.ConfChangeUpdateNode:
                pass
            else:
                raise ConfChangeError(f"unexpected conf change type {cc.type}")
        if not cfg.voters.incoming:
            raise ConfChangeError("removed all voters")

    def _init_progress(
        self, cfg: Config, prs: dict[int, Progress], node: int, is_learner: bool
    ) -> None:
        if is_learner:
            cfg.learners.add(node)
        else:
            cfg.voters.incoming.add(node)
        # A new node is probed from the leader's last index; recent_active so that CheckQuorum
        # does not step the leader down before the newcomer had a chance to answer.
        inflights = Inflights(self.trk.max_inflight, self.trk.max_inflight_bytes)
        prs[node] = Progress(0, max(self.last_index, 1), inflights, is_learner, True)

    def _make_voter(self, cfg: Config, prs: dict[int, Progress], node: int) -> None:
        pr = prs.get(node)
        if pr is None:
            self._init_progress(cfg, prs, node, False)
            return
        pr.is_learner = False
        cfg.learners.discard(node)
        cfg.learners_next.discard(node)
        cfg.voters.incoming.add(node)

    def _make_learner(self, cfg: Config, prs: dict[int, Progress], node: int) -> None:
        pr = prs.get(node)
        if pr is None:
            self._init_progress(cfg, prs, node, True)
            return
        if pr.is_learner:
            return
        # Remove as a voter first (keeping the Progress), then add back as a learner. If it is
        # still a voter in the outgoing config, it becomes a learner only on leaving the joint
        # config.
        self._remove(cfg, prs, node)
        prs[node] = pr
        if node in cfg.voters.outgoing:
            cfg.learners_next.add(node)
        else:
            pr.is_learner = True
            cfg.learners.add(node)

    def _remove(self, cfg: Config, prs: dict[int, Progress], node: int) -> None:
        if node not in prs:
            return
        cfg.voters.incoming.discard(node)
        cfg.learners.discard(node)
        cfg.learners_next.discard(node)
        if node not in cfg.voters.outgoing:
            del prs[node]


def _check_invariants(cfg: Config, prs: dict[int, Progress]) -> None:
    for node in cfg.voters.ids() | cfg.learners | cfg.learners_next:
        if node not in prs:
            raise ConfChangeError(f"no progress for {node}")
    for node in cfg.learners_next:
        if node not in cfg.voters.outgoing:
            raise ConfChangeError(f"{node} is in learners_next but not outgoing")
        if prs[node].is_learner:
            raise ConfChangeError(f"{node} is in learners_next but already marked learner")
    for node in cfg.learners:
        if node in cfg.voters.ids():
            raise ConfChangeError(f"{node} is both learner and voter")
        if not prs[node].is_learner:
            raise ConfChangeError(f"{node} is a learner but not marked as one")
    if not cfg.voters.outgoing and (cfg.learners_next or cfg.auto_leave):
        raise ConfChangeError("learners_next or auto_leave set outside a joint config")
    for node in prs:
        if node not in cfg.voters.ids() and node not in cfg.learners:
            raise ConfChangeError(f"progress for {node} which is not a member")


def restore(trk: ProgressTracker, cs: ConfState, last_index: int) -> None:
    """Install the configuration described by a ConfState (from storage or a snapshot)."""
    cfg = Config(
        JointConfig(cs.voters, cs.voters_outgoing),
        set(cs.learners),
        set(cs.learners_next),
        cs.auto_leave,
    )
    prs: dict[int, Progress] = {}
    for node in cfg.voters.ids() | cfg.learners:
        inflights = Inflights(trk.max_inflight, trk.max_inflight_bytes)
        prs[node] = Progress(0, last_index + 1, inflights, node in cfg.learners, True)
    _check_invariants(cfg, prs)
    install(trk, cfg, prs)
