"""The numbers /metrics reports that only the member knows (the rest are read off the
rooms that own them when /metrics is scraped)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conch.server.server import EtcdServer

BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024)


class Metrics:
    BUCKETS = BUCKETS

    def __init__(self) -> None:
        self.proposals_applied = 0
        self.put_total = 0
        self.range_total = 0
        self.delete_total = 0
        self.txn_total = 0
        self.fsync = [0] * (len(BUCKETS) + 1)
        self.fsync_sum = 0.0
        self.commit = [0] * (len(BUCKETS) + 1)
        self.commit_sum = 0.0

    @staticmethod
    def _observe(hist: list[int], value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                hist[i] += 1
                return
        hist[-1] += 1

    def observe_fsync(self, seconds: float) -> None:
        """Called from the disk thread; a lost increment under a race only blurs a metric."""
        self._observe(self.fsync, seconds)
        self.fsync_sum += seconds

    def observe_commit(self, seconds: float) -> None:
        self._observe(self.commit, seconds)
        self.commit_sum += seconds


def exposition(s: EtcdServer) -> str:
    """/metrics in Prometheus' text format: etcd's metric names for what conch measures."""
    c = s.metrics
    backend = s.maintenance.backend
    out: list[str] = []

    def gauge(name: str, value: float, help_: str, kind: str = "gauge") -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.append(f"{name} {value}")

    def histogram(name: str, buckets: list[int], total: float, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} histogram")
        acc = 0
        for bound, n in zip(BUCKETS, buckets, strict=False):
            acc += n
            out.append(f'{name}_bucket{{le="{bound}"}} {acc}')
        acc += buckets[-1]
        out.append(f'{name}_bucket{{le="+Inf"}} {acc}')
        out.append(f"{name}_sum {total}")
        out.append(f"{name}_count {acc}")

    gauge("etcd_server_has_leader", int(s.lead != 0),
          "Whether or not a leader exists. 1 is existence.")
    gauge("etcd_server_is_leader", int(s.is_leader), "Whether or not this member is a leader.")
    gauge("etcd_server_leader_changes_seen_total", s.leader_changes,
          "The number of leader changes seen.", "counter")
    gauge("etcd_server_proposals_committed_total", s.committed_index,
          "The total number of consensus proposals committed.", "counter")
    gauge("etcd_server_proposals_applied_total", s.applied_index,
          "The total number of consensus proposals applied.", "counter")
    gauge("etcd_server_proposals_pending", len(s.waits),
          "The current number of pending proposals to commit.")
    gauge("etcd_server_quota_backend_bytes", s.cfg.quota_bytes,
          "Current backend storage quota size in bytes.")
    gauge("etcd_mvcc_db_total_size_in_bytes", backend.size(),
          "Total size of the underlying database physically allocated in bytes.")
    gauge("etcd_mvcc_db_total_size_in_use_in_bytes", backend.size_in_use(),
          "Total size of the underlying database logically in use in bytes.")
    for op in ("put", "range", "delete", "txn"):
        gauge(f"etcd_mvcc_{op}_total", getattr(c, f"{op}_total"),
              f"Total number of {op}s seen by this member.", "counter")
    gauge("etcd_debugging_mvcc_current_revision", s.store.current_revision(),
          "The current revision of store.")
    gauge("etcd_debugging_mvcc_compact_revision", s.store.compact_revision(),
          "The revision of the last compaction in store.")
    gauge("etcd_debugging_mvcc_watcher_total", s.hub.watcher_count(),
          "Total number of watchers.")
    histogram("etcd_disk_wal_fsync_duration_seconds", c.fsync, c.fsync_sum,
              "The latency distributions of fsync called by WAL.")
    histogram("etcd_disk_backend_commit_duration_seconds", c.commit, c.commit_sum,
              "The latency distributions of commit called by backend.")
    return "\n".join(out) + "\n"
