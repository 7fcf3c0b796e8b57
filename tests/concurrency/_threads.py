"""Run a blocking call in a thread and collect its outcome (result or exception)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


class Bg:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as e:  # handed to the test
                self.error = e
            finally:
                self.finished.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> Any:
        assert self.finished.wait(timeout), "background call did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


def collect(it: Iterable[Any], out: list[bytes | None]) -> None:
    """Append each observed leader's value (None for "no leader") until ``it`` ends."""
    for kv in it:
        out.append(None if kv is None else kv.value)
