"""Flags, ETCD_* variables and --config-file, parsed as etcd parses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from conch.server.config import ConfigError, compute_cluster_id, compute_member_id, load


def test_defaults_match_etcd() -> None:
    cfg = load([], {})
    assert cfg.name == "default"
    assert cfg.data_dir == "default.etcd"
    assert cfg.listen_client_urls == ["http://localhost:2379"]
    assert cfg.max_txn_ops == 128
    assert cfg.max_request_bytes == 1572864
    assert cfg.quota_bytes == 2 * 1024**3
    assert cfg.min_lease_ttl == 2
    # etcd's well-known IDs for a default single member.
    assert f"{cfg.member_id():x}" == "8e9e05c52164694d"
    assert f"{cfg.cluster_id():x}" == "cdf818194e3a8c32"


def test_go_style_flags() -> None:
    cfg = load(
        ["-name", "n1", "--data-dir=/tmp/x", "--listen-client-urls", "http://127.0.0.1:1",
         "--advertise-client-urls=http://127.0.0.1:1", "--max-txn-ops", "5",
         "--enable-grpc-gateway"],
        {},
    )
    assert (cfg.name, cfg.data_dir, cfg.max_txn_ops) == ("n1", "/tmp/x", 5)
    assert cfg.enable_grpc_gateway is True
    assert cfg.initial_cluster == "n1=http://localhost:2380"


def test_env_vars_like_the_seed_conf() -> None:
    env = {
        "ETCD_NAME": "instance01",
        "ETCD_DATA_DIR": "/var/lib/conch/data",
        "ETCD_LISTEN_CLIENT_URLS": "http://127.0.0.1:2379,http://127.0.0.2:2379",
        "ETCD_ADVERTISE_CLIENT_URLS": "http://127.0.0.1:2379",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": "http://127.0.0.1:2380",
        "ETCD_LISTEN_PEER_URLS": "http://127.0.0.1:2380",
        "ETCD_INITIAL_CLUSTER": "instance01=http://127.0.0.1:2380",
        "ETCD_INITIAL_CLUSTER_STATE": "new",
    }
    cfg = load([], env)
    assert cfg.name == "instance01"
    assert cfg.data_dir == "/var/lib/conch/data"
    assert cfg.listen_client_urls == ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]


def test_flag_and_env_conflict_is_fatal() -> None:
    with pytest.raises(ConfigError, match="conflicting environment variable \"ETCD_NAME\""):
        load(["--name", "a"], {"ETCD_NAME": "b"})


def test_unknown_env_warns_and_unknown_flag_fails() -> None:
    warnings: list[str] = []
    load([], {"ETCD_NO_SUCH_THING": "1", "ETCDCTL_API": "3"}, warn=warnings.append)
    assert warnings == ["unrecognized environment variable ETCD_NO_SUCH_THING=1"]
    with pytest.raises(ConfigError, match="flag provided but not defined: -no-such-flag"):
        load(["--no-such-flag", "1"], {})


def test_listen_client_urls_requires_advertise() -> None:
    with pytest.raises(ConfigError, match="--advertise-client-urls is required"):
        load(["--listen-client-urls", "http://127.0.0.1:1"], {})


def test_election_timeout_rules() -> None:
    with pytest.raises(ConfigError, match="at least as 5 times"):
        load(["--heartbeat-interval", "300", "--election-timeout", "1000"], {})
    assert load(["--election-timeout", "3000"], {}).min_lease_ttl == 5  # ceil(1.5 * 3s)


def test_config_file_overrides_everything(tmp_path: Path) -> None:
    path = tmp_path / "conch.yml"
    path.write_text(
        "name: fromfile\ndata-dir: /tmp/ff\nmax-request-bytes: 2048\n"
        "listen-client-urls: http://127.0.0.1:7\nadvertise-client-urls: http://127.0.0.1:7\n"
        "experimental-watch-progress-notify-interval: 5000000000\n"
    )
    cfg = load(["--config-file", str(path), "--name", "ignored"], {"ETCD_NAME": "ignored"})
    assert (cfg.name, cfg.data_dir, cfg.max_request_bytes) == ("fromfile", "/tmp/ff", 2048)
    assert cfg.watch_progress_notify_interval_s == 5.0


def test_member_and_cluster_ids_are_etcds_algorithm() -> None:
    a = compute_member_id(["http://10.0.0.1:2380"], "tok")
    assert a == compute_member_id(["http://10.0.0.1:2380"], "tok")
    assert a != compute_member_id(["http://10.0.0.1:2380"], "other")
    assert compute_cluster_id([a, 7]) == compute_cluster_id([7, a])
