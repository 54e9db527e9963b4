"""What a loaded model needs to serve streams: its slot pool, its scheduler, leases on slots.

`Runtime.lease(n)` gives a stream its slots for as long as it lives and takes them back however
the stream ends (finished, failed, cancelled, deadline).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from services.decoder import Decoder
from services.model import Arrays, LoadedModel
from services.scheduler import BatchObserver, Scheduler
from services.slots import SlotPool

T = TypeVar("T")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches.

    Attributes:
        max_batch_size: Most rows in one ONNX Runtime call (1: batching off).
        state_slots: Slots in each model's pool (a stream holds one, a beam search one per beam).
        prefill_chunk: Longest piece of a prompt read in one step, so prompts take turns.
        executor_workers: Threads running ONNX Runtime calls, and so batches of one model in
            flight at once.
        inline_step_ms: Steps known to take less run on the event loop's thread (0: never).
    """

    max_batch_size: int = 256
    state_slots: int = 1024
    prefill_chunk: int = 32
    executor_workers: int = 2
    inline_step_ms: float = 0.0


class Runtime:
    """One model version's pool and scheduler."""

    def __init__(
        self,
        model: LoadedModel,
        executor: Executor,
        cfg: EngineConfig,
        *,
        observe: BatchObserver | None = None,
        on_slots: Callable[[Runtime], None] | None = None,
    ) -> None:
        self.model = model
        shapes = {spec.input: list(spec.shape) for spec in model.bundle.manifest.state}
        self.pool = SlotPool(shapes, cfg.state_slots)
        self.scheduler = Scheduler(
            model,
            self.pool,
            executor,
            max_batch_size=cfg.max_batch_size,
            executor_workers=cfg.executor_workers,
            observe=observe,
            inline_step_ms=cfg.inline_step_ms,
        )
        self.prefill_chunk = cfg.prefill_chunk
        self.on_slots = on_slots
        self.streams = 0  # streams holding slots
        self.decoder = Decoder(self)  # the decode loop of language models

    @contextlib.contextmanager
    def lease(self, count: int = 1) -> Iterator[np.ndarray]:
        """`count` zeroed slots for the duration of a stream."""
        slots = self.pool.acquire(count)
        self.streams += 1
        self._changed()
        try:
            yield slots
        finally:
            self.streams -= 1
            self.pool.release(slots)
            self._changed()

    async def step(self, role: str, slots: np.ndarray, inputs: Arrays) -> Arrays:
        return await self.scheduler.step(role, slots, inputs)

    async def prefill(self, role: str, slots: np.ndarray, ids: list[int]) -> list[np.ndarray]:
        """Read `ids` into one slot in chunks; returns each chunk's logits `(T, ...)`."""
        chunks = []
        for start in range(0, len(ids), self.prefill_chunk):
            piece = np.array([ids[start : start + self.prefill_chunk]], dtype=np.int64)
            out = await self.step(role, slots, {"tokens": piece})
            chunks.append(out["logits"][0])
        return chunks

    def _changed(self) -> None:
        if self.on_slots is not None:
            self.on_slots(self)
