"""The real etcdctl against a three-member conch cluster: the commands an operator uses."""

from __future__ import annotations

import json
from typing import Any

from devkit.harness import etcdctl, free_port
from devkit.polling import poll
from tests.cluster.harness import Cluster


def _ctl(cluster: Cluster, *args: str) -> str:
    out = etcdctl(",".join(cluster.endpoints), *args)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    stdout: str = out.stdout
    return stdout


def _status(cluster: Cluster) -> list[dict[str, Any]]:
    statuses: list[dict[str, Any]] = json.loads(
        _ctl(cluster, "endpoint", "status", "--cluster", "-w", "json"))
    return statuses


def test_operator_commands(cluster: Cluster) -> None:
    statuses = poll(lambda: [s for s in _status(cluster) if s["Status"]["leader"]] or None,
                    10, "a leader")
    leader_id = statuses[0]["Status"]["leader"]
    health = etcdctl(",".join(cluster.endpoints), "endpoint", "health", "--cluster")
    assert health.returncode == 0
    assert (health.stdout + health.stderr).count("is healthy") == 3  # 3.4 prints to stderr
    _ctl(cluster, "put", "k", "v")
    hashes = _ctl(cluster, "endpoint", "hashkv", "--cluster").split()
    assert len(set(hashes[1::2])) == 1, hashes
    assert _ctl(cluster, "alarm", "list") == ""
    # move-leader to a follower, sent to the current leader.
    follower = next(s for s in statuses if s["Status"]["header"]["member_id"] != leader_id)
    target = follower["Status"]["header"]["member_id"]
    leader_ep = next(s["Endpoint"] for s in statuses
                     if s["Status"]["header"]["member_id"] == leader_id)
    moved = etcdctl(leader_ep.split("://")[-1], "move-leader", f"{target:x}")
    assert moved.returncode == 0, moved.stderr
    assert f"Leadership transferred from {leader_id:x} to {target:x}" in moved.stdout
    poll(lambda: {s["Status"]["leader"] for s in _status(cluster)} == {target}, 10,
         "every member to follow the new leader")
    # member add --learner / list / promote (refused: never started) / remove.
    url = f"http://127.0.0.1:{free_port()}"
    added = _ctl(cluster, "member", "add", "newone", f"--peer-urls={url}", "--learner")
    new_id = added.split()[1]
    assert 'ETCD_INITIAL_CLUSTER_STATE="existing"' in added
    listed = _ctl(cluster, "member", "list")
    assert f"{new_id}, unstarted, , {url}, , true" in listed
    promote = etcdctl(cluster.members[0], "member", "promote", new_id)
    assert promote.returncode != 0
    assert "can only promote a learner member which is in sync with leader" in promote.stderr
    removed = _ctl(cluster, "member", "remove", new_id).split()  # etcdctl pads IDs (%16x)
    assert removed[:3] == ["Member", new_id, "removed"]
    assert new_id not in _ctl(cluster, "member", "list")
