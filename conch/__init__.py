"""conch: an etcd-compatible key-value store."""

__version__ = "0.1.0"
# The etcd release whose API and behaviour conch follows; reported by /version and Status.
ETCD_COMPAT_VERSION = "3.5.0"
