"""Fixtures for the MVCC store tests: a real LMDB Backend in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mvcc.mvcc_helpers import Harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    hh = Harness(tmp_path)
    yield hh
    hh.backend.close()


@pytest.fixture
def h2(tmp_path: Path) -> Iterator[Harness]:
    (tmp_path / "second").mkdir()
    hh = Harness(tmp_path / "second")
    yield hh
    hh.backend.close()
