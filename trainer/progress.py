"""Periodic progress lines with rate and ETA: every N steps, and at least every `interval`
seconds however slow the steps are (one line at a time, safe in Ray's log stream)."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class Progress:
    """Counts optimizer steps and targets; prints `every` steps and at the end of each epoch."""

    def __init__(
        self,
        *,
        total_steps: int,
        every: int,
        prefix: str = "",
        enabled: bool = True,
        interval: float = 10.0,
    ):
        self.total_steps = max(total_steps, 1)
        self.every = max(every, 1)
        self.prefix = prefix
        self.enabled = enabled
        self.steps = 0
        self.targets = 0
        self.loss_sum = 0.0
        self.loss_count = 0
        self.start = time.perf_counter()
        self.interval = interval
        self.last_emit = self.start

    def step(self, loss: float, targets: int) -> None:
        self.steps += 1
        self.targets += targets
        self.loss_sum += loss
        self.loss_count += 1
        if self.steps % self.every == 0 or time.perf_counter() - self.last_emit >= self.interval:
            self.emit()

    def mean_loss(self) -> float:
        """Mean training loss since the last call (and resets it)."""
        mean = self.loss_sum / max(self.loss_count, 1)
        self.loss_sum, self.loss_count = 0.0, 0
        return mean

    def emit(self, extra: str = "") -> None:
        if not self.enabled:
            return
        self.last_emit = time.perf_counter()
        elapsed = self.last_emit - self.start
        rate = self.steps / max(elapsed, 1e-9)
        eta = (self.total_steps - self.steps) / max(rate, 1e-9)
        loss = f"loss {self.loss_sum / self.loss_count:.4f} " if self.loss_count else ""
        print(
            f"{self.prefix}step {self.steps}/{self.total_steps} "
            f"({100 * self.steps / self.total_steps:.0f}%) {loss}"
            f"{rate:.1f} steps/s {self.targets / max(elapsed, 1e-9):,.0f} targets/s "
            f"elapsed {_clock(elapsed)} eta {_clock(eta)}{extra}",
            flush=True,
        )


class Ticker:
    """A progress line on stderr at most every `interval` seconds (none for quick runs)."""

    def __init__(self, label: str, *, unit: str = "requests", interval: float = 10.0) -> None:
        self.label = label
        self.unit = unit
        self.interval = interval
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.interval and done < total:
            return
        if done == total and self.last == self.start:
            return  # finished before the first line was due
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        print(f"{self.label}: {done}/{total} {self.unit} ({100 * done / max(total, 1):.0f}%) "
              f"{rate:.0f}/s eta {eta:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
