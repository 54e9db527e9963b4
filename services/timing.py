"""A stream's timings, measured from its request's arrival (they go into its final event)."""

from __future__ import annotations

import time

from services.events import Finished
from services.model import LoadedModel


class Clock:
    """Timings of one stream, measured from the request's arrival."""

    def __init__(self, arrived: float) -> None:
        self.arrived = arrived
        self.started: float | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.events = 0

    def start(self) -> None:
        self.started = time.perf_counter()

    def mark(self) -> None:
        """An event is about to be streamed."""
        self.last = time.perf_counter()
        self.first = self.first or self.last
        self.events += 1

    def finish(self, model: LoadedModel, **fields: object) -> Finished:
        now = time.perf_counter()
        started = self.started or now
        first = self.first or now
        gaps = (self.last - first) / (self.events - 1) if self.last and self.events > 1 else 0.0
        return Finished(
            model=model.name,
            version=model.version,
            queue_seconds=started - self.arrived,
            time_to_first_token_seconds=first - self.arrived,
            total_seconds=now - self.arrived,
            mean_inter_token_seconds=gaps,
            **fields,  # type: ignore[arg-type]
        )
