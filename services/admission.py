"""Admission control: a bounded number of streams in flight; beyond it, refuse at once.

A refused call gets RESOURCE_EXHAUSTED immediately (with a `retry-after-ms` hint in its trailing
metadata, which the Recur SDK honours), never a silent queue that grows. Unary calls
(ListModels, health) are not counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from services.errors import ResourceExhausted


class Admission:
    """Counts streams in flight against `limit`."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the stream limit must be >= 1, got {limit}")
        self.limit = limit
        self.active = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one place for the duration of a stream; raise ResourceExhausted when full."""
        if self.active >= self.limit:
            raise ResourceExhausted(
                f"the server is at its limit of {self.limit} streams in flight; retry later"
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
