"""Prometheus metrics (docs/design.md §6), built on an injected CollectorRegistry.

Labels stay low-cardinality: model, version, task, rpc, code. Latency histograms start at 50 µs,
since one RNN step is well under a millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.errors import Expired
from services.events import Event, Finished, RunningLabel, TokenEvent

if TYPE_CHECKING:  # the engine's modules import numpy and ONNX Runtime; metrics need neither
    from services.runtime import Runtime
    from services.scheduler import Scheduler

LATENCY_BUCKETS = (*(5e-5 * 2**i for i in range(18)), 15.0, 30.0, 60.0)  # 50 µs … 60 s
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL_LABELS = ("model", "version", "task")
T = TypeVar("T")


@dataclass
class CallInfo:
    """What a call resolved to, filled in by the servicer and read by the interceptor."""

    rpc: str
    request_id: str = ""  # the client's x-request-id, or one generated for the call
    model: str = ""
    version: str = ""
    task: str = ""
    handler: asyncio.Task[Any] | None = None  # the task running the call's handler
    expired: Expired | None = None  # why the server ended the call (see interceptors.expire)


class ServerMetrics:
    """Every metric the server exports."""

    def __init__(self, registry: CollectorRegistry, *, recording: bool = True) -> None:
        self.registry = registry
        self.recording = recording  # False: record nothing (to measure what recording costs)
        labels = (*MODEL_LABELS, "rpc")
        self.requests = Counter(
            "recur_requests",
            "Finished requests by status code.",
            (*labels, "code"),
            registry=registry,
        )
        self.failures = Counter(
            "recur_request_failures",
            "Failed requests by reason.",
            ("rpc", "reason"),
            registry=registry,
        )
        self.duration = Histogram(
            "recur_request_duration_seconds", "Time from arrival to the end of the call.",
            labels, buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue = Histogram(
            "recur_queue_duration_seconds", "Time from arrival to the first model step.",
            labels, buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "recur_time_to_first_token_seconds", "Time from arrival to the first streamed event.",
            labels, buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.itl = Histogram(
            "recur_inter_token_latency_seconds",
            "Time between consecutive streamed messages (a message may carry several tokens).",
            labels, buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.generated = Counter(
            "recur_generated_tokens", "Tokens streamed to clients.", labels, registry=registry
        )
        self.input_tokens = Counter(
            "recur_input_tokens", "Tokens read from requests.", labels, registry=registry
        )
        # With `--processes N` the parent sums the children's samples; gauges say how: the
        # streams keep a `pid` label (SO_REUSEPORT spreads connections, not load: an uneven
        # spread must show), the queue is summed, the slot share is the fullest process's.
        self.active = Gauge(
            "recur_streams_active", "Streams in progress.", MODEL_LABELS, registry=registry,
            multiprocess_mode="liveall",
        )  # fmt: skip
        self.waiting = Gauge(
            "recur_streams_waiting", "Rows of model steps queued for the next batch.",
            MODEL_LABELS, registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.batch_size = Histogram(
            "recur_batch_size", "Rows (stream steps) per ONNX Runtime call.",
            (*MODEL_LABELS, "graph"), buckets=BATCH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.step_duration = Histogram(
            "recur_step_duration_seconds", "Duration of one batched ONNX Runtime call.",
            (*MODEL_LABELS, "graph"), buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.slots_used = Gauge(
            "recur_state_slots_used_ratio", "Share of the model's state slots held by streams.",
            MODEL_LABELS, registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model_info = Gauge(
            "recur_model_info", "Loaded models (value 1).", (*MODEL_LABELS, "cell"),
            registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip

    def observe_batch(self, scheduler: Scheduler, graph: str, rows: int, seconds: float) -> None:
        """The scheduler's report after every batched call."""
        model = scheduler.model
        labels = (model.name, str(model.version), model.task)
        self.batch_size.labels(*labels, graph).observe(rows)
        self.step_duration.labels(*labels, graph).observe(seconds)
        self.waiting.labels(*labels).set(scheduler.waiting)
        self.slots_used.labels(*labels).set(scheduler.pool.used / scheduler.pool.capacity)

    def observe_slots(self, runtime: Runtime) -> None:
        """A stream took or gave back slots: the pool's fill and the queue length."""
        model = runtime.model
        labels = (model.name, str(model.version), model.task)
        self.slots_used.labels(*labels).set(runtime.pool.used / runtime.pool.capacity)
        self.waiting.labels(*labels).set(runtime.scheduler.waiting)

    @contextmanager
    def streaming(self, info: CallInfo) -> Iterator[None]:
        """Count the call in `recur_streams_active` while the block runs."""
        if not self.recording:
            yield
            return
        gauge = self.active.labels(info.model, info.version, info.task)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    async def observe(
        self, batches: AsyncIterator[list[Event]], info: CallInfo
    ) -> AsyncGenerator[list[Event], None]:
        """Pass a stream's messages through, counting their tokens and timing the gaps between
        messages (a message may carry several tokens: the inter-token latency is per message)."""
        if not self.recording:
            async for batch in _closing(batches):
                yield batch
            return
        labels = (info.model, info.version, info.task, info.rpc)
        # The stream's series, looked up at its first token and kept: `labels()` takes a lock
        # and builds a key on every call, and this runs for every message of every stream.
        series: tuple[Histogram, Counter] | None = None
        last: float | None = None
        with self.streaming(info):
            async for batch in _closing(batches):
                now = time.perf_counter()
                tokens = sum(isinstance(e, TokenEvent | RunningLabel) for e in batch)
                if tokens:
                    series = series or (self.itl.labels(*labels), self.generated.labels(*labels))
                    itl, generated = series
                    if last is not None:
                        itl.observe(now - last)
                    last = now
                    generated.inc(tokens)
                for event in batch:
                    if isinstance(event, Finished):
                        self.queue.labels(*labels).observe(event.queue_seconds)
                        self.ttft.labels(*labels).observe(event.time_to_first_token_seconds)
                        self.input_tokens.labels(*labels).inc(event.input_tokens)
                yield batch


async def _closing(batches: AsyncIterator[T]) -> AsyncIterator[T]:
    """`batches`, closed as soon as this generator is (Python leaves an async generator that is
    closed mid-iteration to garbage collection; a stream's holds state slots)."""
    async with contextlib.aclosing(batches):  # type: ignore[type-var]
        async for batch in batches:
            yield batch
