"""Process fixtures: real etcd / conch servers on loopback (see devkit/harness.py).

- ``etcd_server``   a fresh single-member etcd (skips if the binaries are missing,
                    FAILS instead with CONCH_REQUIRE_ETCD=1)
- ``conch_server``  a fresh conch via ``sys.executable -m conch`` (skips while conch has no
                    ``__main__``; once it exists a start failure is a test failure)
- ``any_server``    parametrised over ["etcd", "conch"]
- ``server_factory``  ``server_factory("etcd"|"conch", **kwargs)`` -> started server; any
                    number per test, all stopped at teardown
- ``@pytest.mark.etcd`` / ``needs_etcd`` fixture: the test needs the reference binaries
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from devkit import harness


def ensure_etcd() -> None:
    """Skip (or fail with CONCH_REQUIRE_ETCD=1) when etcd/etcdctl are missing."""
    if harness.etcd_available():
        return
    msg = (
        f"reference etcd binaries not found (etcd={harness.etcd_binary()},"
        f" etcdctl={harness.etcdctl_binary()})"
    )
    if harness.require_etcd():
        pytest.fail(msg + " and CONCH_REQUIRE_ETCD=1", pytrace=False)
    pytest.skip(msg)


def ensure_conch() -> None:
    if not harness.conch_available():
        pytest.skip("conch server not runnable yet (no conch/__main__.py)")


def ensure_kind(kind: str) -> None:
    if kind == "etcd":
        ensure_etcd()
    elif kind == "conch":
        ensure_conch()
    else:
        raise ValueError(kind)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("etcd") is not None:
        ensure_etcd()


ServerFactory = Callable[..., harness.ServerProcess]


@pytest.fixture
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    started: list[harness.ServerProcess] = []

    def make(kind: str, *, start: bool = True, **kwargs: object) -> harness.ServerProcess:
        ensure_kind(kind)
        kwargs.setdefault("base_dir", tmp_path_factory.mktemp(kind))
        srv = harness.SERVER_KINDS[kind](**kwargs)  # type: ignore[arg-type]
        started.append(srv)  # registered before start: a failed start is still cleaned up
        if start:
            srv.start()
        return srv

    yield make
    errors = []
    for srv in reversed(started):
        try:
            srv.close()
        except Exception as e:  # keep closing the others
            errors.append(f"{srv!r}: {e!r}")
    if errors:
        raise RuntimeError("server cleanup failed: " + "; ".join(errors))


@pytest.fixture
def needs_etcd() -> None:
    ensure_etcd()


@pytest.fixture
def etcd_server(server_factory: ServerFactory) -> harness.ServerProcess:
    return server_factory("etcd")


@pytest.fixture
def conch_server(server_factory: ServerFactory) -> harness.ServerProcess:
    return server_factory("conch")


@pytest.fixture(params=["etcd", "conch"])
def any_server(
    request: pytest.FixtureRequest, server_factory: ServerFactory
) -> harness.ServerProcess:
    return server_factory(request.param)
