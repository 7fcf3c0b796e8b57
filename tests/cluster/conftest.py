from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three conch members configured by env files, started and ready; always stopped."""
    c = Cluster(tmp_path, 3)
    try:
        c.start()
        yield c
    finally:
        c.close()
