"""Fixtures for the client tests: a Client on `any_server` (etcd 3.4 and conch)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conch.client import Client


@pytest.fixture
def client(any_server) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    with Client([any_server.endpoint], timeout=10.0) as c:
        yield c
