"""Continuous batching: every stream's next step of a model, gathered into one ONNX Runtime call.

A stream asks for a step with `await scheduler.step(role, slots, inputs)`. The request waits in a
FIFO queue; whenever a worker is free, the oldest request and every queued request that can share
its call (same graph, same non-padded shape, up to `max_batch_size` rows) run as one batch:
state is gathered from the slot pool, ONNX Runtime runs in the executor, state is scattered back
and each stream gets its rows of the other outputs. Streams join and leave between batches.

Requests only batch with requests of the same shape: decode steps (one token) with decode steps,
prefill chunks of the same length with each other. The source axis of translation graphs is the
exception: sources of different lengths are padded (with the mask saying so), because attention
ignores padding exactly. Engines split long prompts into chunks, so a long prefill takes turns
with everyone else's decode steps instead of stalling them.

The next batch is formed one event-loop turn after a request arrives, so the streams woken by the
previous batch have all queued their next step by then and ride together.

A step that is known to be short runs on the event-loop thread itself, in the turn that forms
its batch (no task, so its streams resume one loop turn sooner), at most one such call a turn.
Known to be short: recent calls of its graph and shape at about this batch size, timed in the
thread that ran them, averaged under `inline_step_ms` milliseconds while no other request
waits (two thread hand-offs then cost more than the call, and the loop has nothing else to
do), or under a hand-off's own cost (`HANDOFF_SECONDS`) whatever waits. While others wait, a
longer step goes to the executor, so that ONNX Runtime works beside the loop's Python instead
of in its turn (run on the loop under load, steps of 0.1-0.3 ms held back the other streams: at
64 completion streams the time to first token went from about 20 ms to 190 ms). Every other
step, and the first of each graph, shape and size, runs in the executor.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from services.model import Arrays, LoadedModel
from services.slots import SlotPool

BatchObserver = Callable[["Scheduler", str, int, float], None]  # scheduler, role, rows, seconds


@dataclass
class _Request:
    role: str
    slots: np.ndarray  # (n,) pool rows this step reads and writes
    inputs: Arrays  # the graph's non-state inputs, batch axis first
    key: tuple[object, ...]  # requests with equal keys can share one call
    source_len: int  # length of the padded source axis (0: none)
    future: asyncio.Future[Arrays] = field(repr=False)

    @property
    def rows(self) -> int:
        return len(self.slots)


class Scheduler:
    """Batches the steps of every stream of one model.

    Args:
        model: The model whose graphs run.
        pool: Its state-slot pool.
        executor: Where ONNX Runtime runs (it releases the GIL).
        max_batch_size: Most rows in one call; 1 turns batching off.
        executor_workers: Most batches in flight at once: one per thread of the executor.
        observe: Called after every batch with its role, rows and duration.
        inline_step_ms: Run a step on the loop's thread when its graph's recent calls at this
            batch size (rounded to a power of two) averaged less than this many milliseconds
            and no other request waits (or less than `HANDOFF_SECONDS`, whatever waits); 0:
            never.
    """

    def __init__(
        self,
        model: LoadedModel,
        pool: SlotPool,
        executor: Executor,
        *,
        max_batch_size: int,
        executor_workers: int,
        observe: BatchObserver | None = None,
        inline_step_ms: float = 0.0,
    ) -> None:
        self.model = model
        self.pool = pool
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.executor_workers = executor_workers
        self.observe = observe
        self.inline_step_ms = inline_step_ms
        self.inline_calls = 0  # steps run on the loop's thread (for tests and curiosity)
        self._cost: dict[tuple[object, int], float] = {}  # (key, size class) -> mean call seconds
        self._queue: deque[_Request] = deque()
        self._in_flight = 0
        self._kick_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._specs = {g.role: g for g in model.bundle.manifest.graphs}
        self._state_out = {role: self._state_outputs(role) for role in self._specs}

    @property
    def waiting(self) -> int:
        """Rows queued and not yet running."""
        return sum(r.rows for r in self._queue if not r.future.done())

    async def step(self, role: str, slots: np.ndarray, inputs: Arrays) -> Arrays:
        """Run graph `role` for `slots`; the state of those slots advances in the pool.

        Returns:
            The graph's non-state outputs for these rows (batch axis first, source axis trimmed
            to this request's source length).
        """
        key, source_len = self._key(role, inputs)
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(role, slots, inputs, key, source_len, future))
        # Pinned from now until the step has run or was dropped: a stream that leaves meanwhile
        # (the decode loop's steps carry many streams' rows) frees its slots only then, so no
        # new stream can take a slot that a queued step is about to overwrite.
        self.pool.pin(slots)
        self._schedule_kick()
        return await future

    def _key(self, role: str, inputs: Arrays) -> tuple[tuple[object, ...], int]:
        """The key of requests that can share a call (the graph and every non-padded input
        dimension), and the length of the padded source axis (0: none)."""
        key: list[object] = [role]
        source_len = 0
        for tensor in self._specs[role].inputs:
            if tensor.name not in inputs:
                continue
            dims = list(tensor.shape)
            shape = inputs[tensor.name].shape
            if "source" in dims:
                source_len = shape[dims.index("source")]
            key.append(tuple(n for d, n in zip(dims, shape, strict=True) if d not in _PADDED))
        return tuple(key), source_len

    def _schedule_kick(self) -> None:
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        while self._in_flight < self.executor_workers:
            batch = self._take()
            if not batch:
                return
            if self._runs_here(batch):  # now, in this turn: no task, no turn to wait for
                self._run_here(batch)
                if self._queue:  # one such call a turn: the loop is blocked no longer than
                    self._schedule_kick()  # a hand-off would take, whatever is queued
                return
            self._in_flight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Request]:
        """The oldest live request and the queued ones that can share its call, in FIFO order."""
        while self._queue and self._queue[0].future.done():  # cancelled while waiting
            self.pool.unpin(self._queue.popleft().slots)
        if not self._queue:
            return []
        head = self._queue.popleft()
        batch, rows, kept = [head], head.rows, deque[_Request]()
        while self._queue:
            request = self._queue.popleft()
            if request.future.done():
                self.pool.unpin(request.slots)
                continue
            if request.key == head.key and rows + request.rows <= self.max_batch_size:
                batch.append(request)
                rows += request.rows
            else:
                kept.append(request)
        self._queue = kept
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        """Run `batch` in the executor (ONNX Runtime releases the GIL meanwhile)."""
        slots = np.concatenate([r.slots for r in batch])  # pinned when queued
        role, started, outputs = batch[0].role, time.perf_counter(), None
        try:
            feeds = self._feeds(batch, slots)
            loop = asyncio.get_running_loop()
            outputs, seconds = await loop.run_in_executor(self.executor, self._timed, role, feeds)
            self._keep(batch, slots, outputs, seconds)
        except Exception as error:
            _fail(batch, error)
            outputs = None
        finally:
            self.pool.unpin(slots)  # frees the slots of streams that left during the call
            self._in_flight -= 1
            self._schedule_kick()
        self._landed(batch, slots, outputs, started)

    def _run_here(self, batch: list[_Request]) -> None:
        """Run `batch` on the loop's thread, now (a step known to be shorter than a hand-off)."""
        slots = np.concatenate([r.slots for r in batch])
        role, started, outputs = batch[0].role, time.perf_counter(), None
        self.inline_calls += 1
        try:
            outputs, seconds = self._timed(role, self._feeds(batch, slots))
            self._keep(batch, slots, outputs, seconds)
        except Exception as error:
            _fail(batch, error)
            outputs = None
        finally:
            self.pool.unpin(slots)
        self._landed(batch, slots, outputs, started)

    def _runs_here(self, batch: list[_Request]) -> bool:
        """Whether `batch` runs on the loop's thread: recent calls of its graph and shape at
        about this many rows averaged less than a thread hand-off (`HANDOFF_SECONDS`), or less
        than `inline_step_ms` while no other request waits (the first call of each runs in the
        executor; `inline_step_ms` 0: none runs on the loop)."""
        mean = self._cost.get(_size(batch))
        if mean is None:
            return False
        limit = self.inline_step_ms / 1000
        if self._queue:  # others wait: only a step cheaper than handing it off
            limit = min(limit, HANDOFF_SECONDS)
        return mean < limit

    def _timed(self, role: str, feeds: Arrays) -> tuple[Arrays, float]:
        """`model.run`, and the seconds the call itself took, timed in the thread that runs it:
        the wait for an executor thread and for the loop to take the result are not the call's
        cost (counted in, they grow with the load and kept short steps off the loop for good)."""
        start = time.perf_counter()
        outputs = self.model.run(role, feeds)
        return outputs, time.perf_counter() - start

    def _keep(
        self, batch: list[_Request], slots: np.ndarray, outputs: Arrays, seconds: float
    ) -> None:
        """After a call that took `seconds`: its cost remembered, the new state in the pool."""
        size = _size(batch)
        mean = self._cost.get(size)
        self._cost[size] = seconds if mean is None else 0.8 * mean + 0.2 * seconds
        role = batch[0].role
        self.pool.write(slots, {s: outputs.pop(o) for o, s in self._state_out[role].items()})

    def _landed(
        self, batch: list[_Request], slots: np.ndarray, outputs: Arrays | None, started: float
    ) -> None:
        """A batch is over and its slots unpinned (the pool's fill that observers report counts
        the slots freed by that): observed, and its rows handed to their streams."""
        if self.observe is not None:
            self.observe(self, batch[0].role, len(slots), time.perf_counter() - started)
        if outputs is not None:
            self._deliver(batch, outputs)

    def _feeds(self, batch: list[_Request], slots: np.ndarray) -> Arrays:
        """The batch's inputs: per-request inputs stacked (sources padded) plus gathered state."""
        spec = self._specs[batch[0].role]
        width = max(r.source_len for r in batch)
        feeds: Arrays = {}
        for tensor in spec.inputs:
            if tensor.name in self.pool.arrays:
                continue
            parts = [r.inputs[tensor.name] for r in batch]
            if len(parts) == 1:
                feeds[tensor.name] = parts[0]
            elif "source" in tensor.shape:
                fill = self.model.pad_id if parts[0].dtype == np.int64 else 0
                feeds[tensor.name] = stack_padded(parts, list(tensor.shape).index("source"),
                                                   width, fill)  # fmt: skip
            else:
                feeds[tensor.name] = np.concatenate(parts)
        state_inputs = [t.name for t in spec.inputs if t.name in self.pool.arrays]
        if state_inputs:
            feeds.update(self.pool.read(slots))
        return feeds

    def _deliver(self, batch: list[_Request], outputs: Arrays) -> None:
        spec = self._specs[batch[0].role]
        source_axes = {
            t.name: list(t.shape).index("source") for t in spec.outputs if "source" in t.shape
        }
        start = 0
        for request in batch:
            rows = slice(start, start + request.rows)
            start += request.rows
            if request.future.done():  # cancelled while running: its rows are dropped
                continue
            mine = {name: value[rows] for name, value in outputs.items()}
            for name, axis in source_axes.items():
                trim: list[slice] = [slice(None)] * mine[name].ndim
                trim[axis] = slice(request.source_len)
                mine[name] = mine[name][tuple(trim)]  # a view: this request's source positions
            request.future.set_result(mine)

    def _state_outputs(self, role: str) -> dict[str, str]:
        """Graph output name -> pool state name (`h_out` -> `h`; the encoder's `h_init` -> `h`)."""
        outputs = {t.name for t in self._specs[role].outputs}
        mapping = {}
        for state in self.model.bundle.manifest.state:
            for name in (state.output, f"{state.input}_init"):
                if name in outputs:
                    mapping[name] = state.input
        return mapping


_PADDED = ("batch", "source")
# About what a step's trip through the executor costs on this 2-core machine: 93 µs from
# `run_in_executor` to the awaiting coroutine for a call that does nothing, 50 µs of it the
# loop's own CPU. A step that takes less is cheaper run on the loop, however busy.
HANDOFF_SECONDS = 0.0001


def _size(batch: list[_Request]) -> tuple[object, int]:
    """What a call's cost is remembered by: its graph and shape, and about how many rows."""
    return batch[0].key, sum(r.rows for r in batch).bit_length()


def _fail(batch: list[_Request], error: Exception) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_exception(error)


def stack_padded(parts: list[np.ndarray], axis: int, width: int, fill: float) -> np.ndarray:
    """`parts` concatenated on the batch axis, each padded with `fill` to `width` on `axis`: one
    array filled in place (no padded copy of every part)."""
    shape = list(parts[0].shape)
    shape[0], shape[axis] = sum(len(p) for p in parts), width
    out = np.full(shape, fill, dtype=parts[0].dtype)
    start = 0
    for part in parts:
        index: list[slice] = [slice(None)] * out.ndim
        index[0] = slice(start, start + len(part))
        index[axis] = slice(part.shape[axis])
        out[tuple(index)] = part
        start += len(part)
    return out
