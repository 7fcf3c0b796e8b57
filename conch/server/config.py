"""Server configuration: etcd's flags, their ETCD_* environment variables, and --config-file.

Parsing follows etcd (server/etcdmain/config.go, pkg/flags):
- flags are Go-style: `-name v`, `--name v`, `--name=v`; a boolean alone means true;
- every flag `--some-flag` can also come from `ETCD_SOME_FLAG`; a setting given both ways is
  a fatal conflict; unknown `ETCD_*` variables are warned about;
- `--config-file` (YAML, keys are the flag names) makes every other flag and env var ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import yaml


class ConfigError(Exception):
    """A configuration the member must refuse to start with."""


def _parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "t", "true"):
        return True
    if v in ("0", "f", "false"):
        return False
    raise ValueError(f"invalid boolean value {value!r}")


def _parse_duration_s(value: str) -> float:
    """A Go duration ("10m", "1h30m", "500ms") in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    s = value.strip()
    if s in ("0", ""):
        return 0.0
    total, num = 0.0, ""
    i = 0
    while i < len(s):
        c = s[i]
        if c.isdigit() or c == ".":
            num += c
            i += 1
            continue
        unit = ""
        while i < len(s) and not (s[i].isdigit() or s[i] == "."):
            unit += s[i]
            i += 1
        if not num or unit not in units:
            raise ValueError(f"invalid duration {value!r}")
        total += float(num) * units[unit]
        num = ""
    if num:
        raise ValueError(f"missing unit in duration {value!r}")
    return total


def periodic_retention_s(retention: str) -> float:
    """etcd: a bare number is hours; otherwise a Go duration."""
    try:
        return float(int(retention)) * 3600.0
    except ValueError:
        pass
    try:
        return _parse_duration_s(retention)
    except ValueError as exc:
        raise ConfigError(f"invalid auto-compaction-retention {retention!r}: {exc}") from exc



@dataclasses.dataclass(frozen=True)
class _Flag:
    name: str
    default: str
    kind: str  # "str" | "int" | "bool" | "urls" | "duration"
    help: str


# The flags conch understands. Flags etcd has that conch accepts but does not act on are in
# _ACCEPTED_IGNORED below, so that etcd's configuration files and unit files still work.
_FLAGS: tuple[_Flag, ...] = (
    _Flag("name", "default", "str", "Human-readable name for this member."),
    _Flag("data-dir", "${name}.etcd", "str", "Path to the data directory."),
    _Flag("wal-dir", "", "str", "Path to the dedicated wal directory."),
    _Flag("snapshot-count", "100000", "int", "Committed transactions that trigger a snapshot."),
    _Flag("heartbeat-interval", "100", "int", "Time (in milliseconds) of a heartbeat interval."),
    _Flag("election-timeout", "1000", "int", "Time (in milliseconds) for an election to timeout."),
    _Flag("listen-peer-urls", "http://localhost:2380", "urls", "URLs to listen on for peers."),
    _Flag("listen-client-urls", "http://localhost:2379", "urls", "URLs to listen on for clients."),
    _Flag(
        "listen-client-http-urls",
        "",
        "urls",
        "URLs to serve the HTTP endpoints (/health, /version, /metrics) on.",
    ),
    _Flag("listen-metrics-urls", "", "urls", "URLs to serve /metrics and /health on."),
    _Flag("max-txn-ops", "128", "int", "Maximum number of operations permitted in a transaction."),
    _Flag("max-request-bytes", "1572864", "int", "Maximum client request size in bytes."),
    _Flag("quota-backend-bytes", "0", "int", "Backend size that raises the NOSPACE alarm."),
    _Flag(
        "initial-advertise-peer-urls",
        "http://localhost:2380",
        "urls",
        "This member's peer URLs to advertise to the rest of the cluster.",
    ),
    _Flag(
        "initial-cluster",
        "default=http://localhost:2380",
        "str",
        "Initial cluster configuration for bootstrapping.",
    ),
    _Flag("initial-cluster-state", "new", "str", "Initial cluster state ('new' or 'existing')."),
    _Flag("initial-cluster-token", "etcd-cluster", "str", "Initial cluster token."),
    _Flag(
        "advertise-client-urls",
        "http://localhost:2379",
        "urls",
        "This member's client URLs to advertise to the public.",
    ),
    _Flag("auto-compaction-mode", "periodic", "str", "'periodic' or 'revision'."),
    _Flag("auto-compaction-retention", "0", "str", "Auto compaction retention (0 = off)."),
    _Flag("enable-grpc-gateway", "true", "bool", "Enable the JSON gateway."),
    _Flag("log-level", "info", "str", "debug, info, warn, error, panic, or fatal."),
    _Flag("logger", "zap", "str", "Only 'zap' is supported."),
    _Flag("log-outputs", "default", "str", "default, stderr, stdout, or file paths."),
    _Flag(
        "experimental-watch-progress-notify-interval",
        "10m",
        "duration",
        "Duration of periodic watch progress notifications.",
    ),
    _Flag("force-new-cluster", "false", "bool", "Force to create a new one member cluster."),
    _Flag("strict-reconfig-check", "true", "bool", "Reject reconfigurations that lose quorum."),
    _Flag("pre-vote", "true", "bool", "Enable the raft Pre-Vote algorithm."),
    _Flag("max-snapshots", "5", "int", "Maximum number of snapshot files to retain (0 = all)."),
    _Flag("max-wals", "5", "int", "Maximum number of wal files to retain (0 = all)."),
    _Flag(
        "experimental-snapshot-catchup-entries",
        "5000",
        "int",
        "Entries kept after a raft log compaction, for slow followers to catch up.",
    ),
    _Flag("experimental-max-learners", "1", "int", "Maximum number of learners in the cluster."),
    _Flag("max-learners", "1", "int", "Maximum number of learners in the cluster (3.6 name)."),
    _Flag("unsafe-no-fsync", "false", "bool", "Disables fsync, unsafe."),
)

# etcd flags that conch accepts (so existing configs start) but does not act on yet.
_ACCEPTED_IGNORED: tuple[_Flag, ...] = tuple(
    _Flag(n, d, k, "Accepted for compatibility; not used by conch yet.")
    for n, d, k in (
        ("initial-election-tick-advance", "true", "bool"),
        ("backend-batch-interval", "", "str"),
        ("backend-batch-limit", "0", "int"),
        ("backend-bbolt-freelist-type", "map", "str"),
        ("max-concurrent-streams", "4294967295", "str"),
        ("grpc-keepalive-min-time", "5s", "str"),
        ("grpc-keepalive-interval", "2h", "str"),
        ("grpc-keepalive-timeout", "20s", "str"),
        ("enable-pprof", "false", "bool"),
        ("metrics", "basic", "str"),
        ("cors", "*", "str"),
        ("host-whitelist", "*", "str"),
        ("log-format", "json", "str"),
        ("enable-log-rotation", "false", "bool"),
        ("discovery", "", "str"),
        ("discovery-srv", "", "str"),
        ("auth-token", "simple", "str"),
        ("auth-token-ttl", "300", "int"),
        ("bcrypt-cost", "10", "int"),
        ("experimental-initial-corrupt-check", "false", "bool"),
        ("experimental-corrupt-check-time", "0s", "str"),
        ("experimental-enable-lease-checkpoint", "false", "bool"),
        ("experimental-compaction-batch-limit", "1000", "int"),
    )
)

_ALL: dict[str, _Flag] = {f.name: f for f in _FLAGS + _ACCEPTED_IGNORED}


def env_name(flag: str) -> str:
    return "ETCD_" + flag.upper().replace("-", "_")


@dataclasses.dataclass
class Config:
    name: str = "default"
    data_dir: str = "default.etcd"
    wal_dir: str = ""
    snapshot_count: int = 100000
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    listen_client_urls: list[str] = dataclasses.field(
        default_factory=lambda: ["http://localhost:2379"]
    )
    listen_client_http_urls: list[str] = dataclasses.field(default_factory=list)
    listen_metrics_urls: list[str] = dataclasses.field(default_factory=list)
    listen_peer_urls: list[str] = dataclasses.field(
        default_factory=lambda: ["http://localhost:2380"]
    )
    advertise_client_urls: list[str] = dataclasses.field(
        default_factory=lambda: ["http://localhost:2379"]
    )
    initial_advertise_peer_urls: list[str] = dataclasses.field(
        default_factory=lambda: ["http://localhost:2380"]
    )
    initial_cluster: str = "default=http://localhost:2380"
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    max_txn_ops: int = 128
    max_request_bytes: int = 1572864
    quota_backend_bytes: int = 0
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"
    enable_grpc_gateway: bool = True
    log_level: str = "info"
    watch_progress_notify_interval_s: float = 600.0
    unsafe_no_fsync: bool = False
    # Whether --listen-peer-urls was given: a lone member only listens for peers if asked.
    listen_peer_urls_set: bool = False
    strict_reconfig_check: bool = True
    max_snapshots: int = 5
    max_wals: int = 5
    snapshot_catchup_entries: int = 5000
    max_learners: int = 1
    warnings: list[str] = dataclasses.field(default_factory=list)

    # --- derived values ---------------------------------------------------------------
    @property
    def member_dir(self) -> str:
        return os.path.join(self.data_dir, "member")

    @property
    def wal_path(self) -> str:
        return self.wal_dir or os.path.join(self.member_dir, "wal")

    @property
    def backend_path(self) -> str:
        return os.path.join(self.member_dir, "snap", "db")

    @property
    def quota_bytes(self) -> int:
        """etcd: 0 means the default quota (2 GiB); negative disables it."""
        if self.quota_backend_bytes == 0:
            return 2 * 1024**3
        return self.quota_backend_bytes

    @property
    def min_lease_ttl(self) -> int:
        """etcd's minimum lease TTL: ceil(1.5 * election timeout) in seconds (2 by default)."""
        return -(-3 * self.election_timeout_ms // 2000)

    def initial_cluster_map(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for part in filter(None, (p.strip() for p in self.initial_cluster.split(","))):
            if "=" not in part:
                raise ConfigError(f"invalid initial-cluster entry {part!r}")
            name, url = part.split("=", 1)
            out.setdefault(name, []).append(url)
        return out

    def member_id(self) -> int:
        return compute_member_id(self.initial_advertise_peer_urls, self.initial_cluster_token)

    def cluster_id(self) -> int:
        ids = [
            compute_member_id(urls, self.initial_cluster_token)
            for urls in self.initial_cluster_map().values()
        ]
        return compute_cluster_id(ids)


def compute_member_id(peer_urls: Sequence[str], token: str) -> int:
    """etcd's member ID: first 8 bytes (big-endian) of sha1(sorted peer URLs + cluster token)."""
    b = "".join(sorted(peer_urls)).encode() + token.encode()
    return int(struct.unpack(">Q", hashlib.sha1(b).digest()[:8])[0])


def compute_cluster_id(member_ids: Sequence[int]) -> int:
    """etcd's cluster ID: first 8 bytes of sha1 over the sorted member IDs (8-byte big-endian)."""
    b = b"".join(struct.pack(">Q", m) for m in sorted(member_ids))
    return int(struct.unpack(">Q", hashlib.sha1(b).digest()[:8])[0])


def _split_urls(value: str) -> list[str]:
    urls = [u.strip() for u in value.split(",") if u.strip()]
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ("http", "https", "unix", "unixs") or not parts.netloc:
            raise ConfigError(f"URL scheme must be http, https, unix, or unixs: {u}")
    return urls


def _usage() -> str:
    lines = ["Usage:", "", "  conch [flags]", "    Start a conch server.", "", "Flags:"]
    for f in _FLAGS:
        lines.append(f"  --{f.name} '{f.default}'")
        lines.append(f"    {f.help}")
    lines.append("  --config-file ''")
    lines.append(
        "    Path to the server configuration file (YAML); other flags and env are ignored."
    )
    return "\n".join(lines)


def _parse_argv(argv: Sequence[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise ConfigError(f"'{arg}' is not a valid flag")
        name = arg.lstrip("-")
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name not in _ALL and name != "config-file":
            raise ConfigError(f"flag provided but not defined: -{name}")
        kind = _ALL[name].kind if name in _ALL else "str"
        if value is None:
            if kind == "bool":
                value = "true"
            else:
                if i >= len(argv):
                    raise ConfigError(f"flag needs an argument: -{name}")
                value = argv[i]
                i += 1
        if name in given:
            # Go's flag package lets the last one win; etcd does too.
            pass
        given[name] = value
    return given


def _from_file(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} is not a mapping")
    out: dict[str, str] = {}
    for key, value in data.items():
        name = str(key)
        if name not in _ALL:
            continue
        flag = _ALL[name]
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, list):
            out[name] = ",".join(str(v) for v in value)
        elif flag.kind == "duration" and isinstance(value, int):
            out[name] = f"{value}ns"  # etcd's config file durations are integer nanoseconds
        else:
            out[name] = str(value)
    return out


def load(
    argv: Sequence[str], environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Config:
    """Build a Config from command-line arguments and environment, as etcd does."""
    env = dict(os.environ if environ is None else environ)
    warnings: list[str] = []
    given = _parse_argv(argv)
    config_file = given.pop("config-file", None) or env.get("ETCD_CONFIG_FILE")
    if config_file:
        values = _from_file(config_file)
    else:
        values = dict(given)
        known_env = {env_name(n) for n in _ALL} | {"ETCD_CONFIG_FILE"}
        for key in sorted(env):
            if key.startswith("ETCD_") and key not in known_env and key not in _ETCDCTL_ENV:
                warnings.append(f"unrecognized environment variable {key}={env[key]}")
        for name in _ALL:
            key = env_name(name)
            if key in env:
                if name in given:
                    raise ConfigError(
                        f'conflicting environment variable "{key}" is shadowed by corresponding '
                        "command-line flag (either unset environment variable or disable flag)"
                    )
                values[name] = env[key]
    for w in warnings:
        (warn or (lambda m: print(m, file=sys.stderr)))(w)
    cfg = _build(values)
    cfg.warnings = warnings
    return cfg


# Variables etcdctl reads; etcd ignores them silently too.
_ETCDCTL_ENV = {"ETCDCTL_API", "ETCD_UNSUPPORTED_ARCH"}


def _build(values: dict[str, str]) -> Config:
    def get(name: str) -> str:
        return values.get(name, _ALL[name].default)

    def as_int(name: str) -> int:
        try:
            return int(get(name))
        except ValueError as exc:
            raise ConfigError(f'invalid value "{get(name)}" for flag -{name}: {exc}') from exc

    def as_bool(name: str) -> bool:
        try:
            return _parse_bool(get(name))
        except ValueError as exc:
            raise ConfigError(f'invalid value "{get(name)}" for flag -{name}: {exc}') from exc

    kw: dict[str, Any] = {}
    kw["name"] = get("name")
    data_dir = get("data-dir")
    kw["data_dir"] = f"{kw['name']}.etcd" if data_dir == "${name}.etcd" else data_dir
    kw["wal_dir"] = get("wal-dir")
    kw["snapshot_count"] = as_int("snapshot-count")
    kw["heartbeat_interval_ms"] = as_int("heartbeat-interval")
    kw["election_timeout_ms"] = as_int("election-timeout")
    for flag, attr in (
        ("listen-client-urls", "listen_client_urls"),
        ("listen-client-http-urls", "listen_client_http_urls"),
        ("listen-metrics-urls", "listen_metrics_urls"),
        ("listen-peer-urls", "listen_peer_urls"),
        ("advertise-client-urls", "advertise_client_urls"),
        ("initial-advertise-peer-urls", "initial_advertise_peer_urls"),
    ):
        kw[attr] = _split_urls(get(flag))
    kw["initial_cluster"] = get("initial-cluster")
    kw["initial_cluster_state"] = get("initial-cluster-state")
    kw["initial_cluster_token"] = get("initial-cluster-token")
    kw["max_txn_ops"] = as_int("max-txn-ops")
    kw["max_request_bytes"] = as_int("max-request-bytes")
    kw["quota_backend_bytes"] = as_int("quota-backend-bytes")
    kw["auto_compaction_mode"] = get("auto-compaction-mode")
    kw["auto_compaction_retention"] = get("auto-compaction-retention")
    kw["enable_grpc_gateway"] = as_bool("enable-grpc-gateway")
    kw["log_level"] = get("log-level")
    kw["unsafe_no_fsync"] = as_bool("unsafe-no-fsync")
    kw["listen_peer_urls_set"] = "listen-peer-urls" in values
    kw["strict_reconfig_check"] = as_bool("strict-reconfig-check")
    kw["max_snapshots"] = as_int("max-snapshots")
    kw["max_wals"] = as_int("max-wals")
    kw["snapshot_catchup_entries"] = as_int("experimental-snapshot-catchup-entries")
    kw["max_learners"] = as_int(
        "max-learners" if "max-learners" in values else "experimental-max-learners"
    )
    try:
        kw["watch_progress_notify_interval_s"] = _parse_duration_s(
            get("experimental-watch-progress-notify-interval")
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    cfg = Config(**kw)
    _validate(cfg, values)
    return cfg


def _validate(cfg: Config, values: dict[str, str]) -> None:
    if cfg.initial_cluster_state not in ("new", "existing"):
        raise ConfigError(f"unexpected initial-cluster-state {cfg.initial_cluster_state!r}")
    if cfg.log_level not in ("debug", "info", "warn", "error", "dpanic", "panic", "fatal"):
        raise ConfigError(f"unknown log-level {cfg.log_level!r}")
    if cfg.heartbeat_interval_ms <= 0 or cfg.election_timeout_ms < 5 * cfg.heartbeat_interval_ms:
        raise ConfigError(
            f"--election-timeout[{cfg.election_timeout_ms}ms] should be at least as 5 times as "
            f"--heartbeat-interval[{cfg.heartbeat_interval_ms}ms]"
        )
    if cfg.election_timeout_ms > 50000:
        raise ConfigError(
            f"--election-timeout[{cfg.election_timeout_ms}ms] is too long, "
            "and should be set less than 50000ms"
        )
    if cfg.max_request_bytes <= 0:
        raise ConfigError("--max-request-bytes must be positive")
    if cfg.auto_compaction_mode not in ("periodic", "revision"):
        raise ConfigError(
            f"unknown auto-compaction-mode {cfg.auto_compaction_mode!r} "
            "(expected 'periodic' or 'revision')"
        )
    if cfg.auto_compaction_mode == "periodic":
        periodic_retention_s(cfg.auto_compaction_retention)
    else:
        try:
            int(cfg.auto_compaction_retention)
        except ValueError as exc:
            raise ConfigError(
                f"invalid auto-compaction-retention {cfg.auto_compaction_retention!r} "
                "for revision mode (expected an integer)"
            ) from exc
    # etcd: setting --listen-client-urls requires --advertise-client-urls too.
    if "listen-client-urls" in values and "advertise-client-urls" not in values:
        raise ConfigError(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
        )
    if cfg.name not in cfg.initial_cluster_map() and cfg.initial_cluster_state == "new":
        if "initial-cluster" in values:
            raise ConfigError(
                f"couldn't find local name {cfg.name!r} in the initial cluster configuration"
            )
        # Default single-member bootstrap: etcd defaults initial-cluster to "default=...";
        # a different --name without --initial-cluster gets itself as the only member.
        cfg.initial_cluster = ",".join(
            f"{cfg.name}={u}" for u in cfg.initial_advertise_peer_urls
        )


def usage() -> str:
    return _usage()
