"""Prometheus metrics (docs/design.md §6), built on an injected CollectorRegistry.

Labels stay low-cardinality: model, version, task, rpc, code. Latency histograms start at 50 µs,
since one RNN step is well under a millisecond.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.errors import ServiceError
from services.events import Event, Finished, FinishReason

if TYPE_CHECKING:  # the engine's modules import numpy and ONNX Runtime; metrics need neither
    from services.runtime import Runtime
    from services.scheduler import Scheduler

LATENCY_BUCKETS = (*(5e-5 * 2**i for i in range(18)), 15.0, 30.0, 60.0)  # 50 µs … 60 s
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL_LABELS = ("model", "version", "task")


@dataclass
class CallInfo:
    """What a call resolved to, filled in by the servicer and read by the interceptor."""

    rpc: str
    request_id: str = ""  # the client's x-request-id, or one generated for the call
    model: str = ""
    version: str = ""
    task: str = ""
    handler: asyncio.Task[Any] | None = None  # the task running the call's handler
    # Why the server ended the call (see interceptors.expire): an idle session's Expired, or
    # the Unavailable of a drain.
    expired: ServiceError | None = None


class ServerMetrics:
    """Every metric the server exports."""

    def __init__(self, registry: CollectorRegistry, *, recording: bool = True) -> None:
        self.registry = registry
        self.recording = recording  # False: record nothing (to measure what recording costs)
        # Labelled children, looked up once: `labels()` takes a lock and builds a key per call.
        self._requests: dict[tuple[tuple[str, ...], str], tuple[Counter, Histogram]] = {}
        self._streams: dict[tuple[str, ...], StreamSeries] = {}
        self._models: dict[tuple[str, ...], ModelSeries] = {}
        self._failures: dict[tuple[str, str], Counter] = {}
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
            "Time between consecutive streamed messages of one answer (a message may carry several "
            "tokens).",
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
        series = self._model_series(scheduler.model)
        batch_size, step_duration = series.graphs(graph)
        batch_size.observe(rows)
        step_duration.observe(seconds)
        series.waiting.set(scheduler.waiting)
        series.slots_used.set(scheduler.pool.used / scheduler.pool.capacity)

    def observe_slots(self, runtime: Runtime) -> None:
        """A stream took or gave back slots: the pool's fill and the queue length."""
        series = self._model_series(runtime.model)
        series.slots_used.set(runtime.pool.used / runtime.pool.capacity)
        series.waiting.set(runtime.scheduler.waiting)

    def finished(self, info: CallInfo, code: str, seconds: float) -> None:
        """A call ended with status `code` after `seconds` (the interceptor's report)."""
        if not self.recording:
            return
        labels = (info.model, info.version, info.task, info.rpc)
        requests = self._requests.get((labels, code))
        if requests is None:
            requests = self._requests[labels, code] = (
                self.requests.labels(*labels, code),
                self.duration.labels(*labels),
            )
        count, duration = requests
        count.inc()
        duration.observe(seconds)
        if code != "OK":
            failures = self._failures.get((info.rpc, code))
            if failures is None:
                failures = self._failures[info.rpc, code] = self.failures.labels(
                    info.rpc, code.lower()
                )
            failures.inc()

    def series(self, info: CallInfo) -> StreamSeries:
        """The stream metrics' children of a call's labels (its model resolved), made at the
        first stream with them and kept."""
        labels = (info.model, info.version, info.task, info.rpc)
        series = self._streams.get(labels)
        if series is None:
            series = self._streams[labels] = StreamSeries(self, labels)
        return series

    def _model_series(self, model: Any) -> ModelSeries:
        labels = (model.name, str(model.version), model.task)
        series = self._models.get(labels)
        if series is None:
            series = self._models[labels] = ModelSeries(self, labels)
        return series

    @contextmanager
    def streaming(self, info: CallInfo) -> Iterator[StreamMeter | None]:
        """Count the call in `recur_streams_active` while the block runs; yields the meter that
        its messages go to (None when recording is off), flushed when the block ends."""
        if not self.recording:
            yield None
            return
        series = self.series(info)
        meter = StreamMeter(series)
        series.active.inc()
        try:
            yield meter
        finally:
            meter.flush()
            series.active.dec()

    async def observe(
        self, batches: AsyncGenerator[list[Event], None], info: CallInfo
    ) -> AsyncGenerator[list[Event], None]:
        """Pass a stream's messages through, counting their tokens and timing the gaps between
        messages (a message may carry several tokens: the inter-token latency is per message).
        `batches` is closed as soon as this generator is (Python leaves an async generator that
        is closed mid-iteration to garbage collection; a stream's holds state slots)."""
        async with contextlib.aclosing(batches):
            with self.streaming(info) as meter:
                async for batch in batches:
                    if meter is not None:
                        meter.message(batch)
                    yield batch


class StreamSeries:
    """The labelled children that the streams of one (model, version, task, rpc) record into.
    Made only for streams (whose model was resolved): a call refused before that has no
    time to first token or tokens to show."""

    def __init__(self, metrics: ServerMetrics, labels: tuple[str, ...]) -> None:
        self.itl = metrics.itl.labels(*labels)
        self.generated = metrics.generated.labels(*labels)
        self.queue = metrics.queue.labels(*labels)
        self.ttft = metrics.ttft.labels(*labels)
        self.input_tokens = metrics.input_tokens.labels(*labels)
        self.active = metrics.active.labels(*labels[:-1])  # streams: no rpc label


class ModelSeries:
    """The labelled children of one loaded model's engine metrics, looked up once."""

    def __init__(self, metrics: ServerMetrics, labels: tuple[str, ...]) -> None:
        self.metrics = metrics
        self.labels = labels
        self.waiting = metrics.waiting.labels(*labels)
        self.slots_used = metrics.slots_used.labels(*labels)
        self._graphs: dict[str, tuple[Histogram, Histogram]] = {}

    def graphs(self, graph: str) -> tuple[Histogram, Histogram]:
        """`recur_batch_size` and `recur_step_duration_seconds` of one graph."""
        found = self._graphs.get(graph)
        if found is None:
            found = self._graphs[graph] = (
                self.metrics.batch_size.labels(*self.labels, graph),
                self.metrics.step_duration.labels(*self.labels, graph),
            )
        return found


class StreamMeter:
    """One stream's tokens and gaps between messages, counted in the stream and handed to
    Prometheus at most every `FLUSH_SECONDS` and when the stream ends.

    Per message this costs a clock read and a few integer additions: the gaps are counted into
    the histogram's buckets here (the same buckets, the same rule as `Histogram.observe`), and
    the shared, locked series are touched once per flush. Recording was about a tenth of a
    server's throughput when every message took the locks (`make bench`, scenario metrics).
    """

    FLUSH_SECONDS = 1.0

    def __init__(self, series: StreamSeries) -> None:
        self.series = series
        self.tokens = 0
        self.gaps = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, then above the last (+Inf)
        self.gap_sum = 0.0
        self.last: float | None = None
        self.flushed = time.perf_counter()

    def message(self, batch: list[Event]) -> None:
        """One message written: its token events, or an answer's final event (which ends the
        answer's last message; a session's next answer starts its own gaps). An answer that a
        newer keystroke superseded before it started is not timed."""
        now = time.perf_counter()
        final = batch[-1] if isinstance(batch[-1], Finished) else None
        tokens = len(batch) - (final is not None)
        if tokens:
            if self.last is not None:
                gap = now - self.last
                self.gaps[bisect.bisect_left(LATENCY_BUCKETS, gap)] += 1
                self.gap_sum += gap
            self.last = now
            self.tokens += tokens
        if final is not None:
            self.last = None
            if final.reason != FinishReason.SUPERSEDED:
                self.series.queue.observe(final.queue_seconds)
                self.series.ttft.observe(final.time_to_first_token_seconds)
            self.series.input_tokens.inc(final.input_tokens)
        if now - self.flushed >= self.FLUSH_SECONDS:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Hand what was counted since the last flush to the shared series."""
        self.flushed = time.perf_counter() if now is None else now
        if self.tokens:
            self.series.generated.inc(self.tokens)
            self.tokens = 0
        if any(self.gaps):
            add_observations(self.series.itl, self.gaps, self.gap_sum)
            self.gaps = [0] * len(self.gaps)
            self.gap_sum = 0.0


def add_observations(histogram: Histogram, counts: list[int], total: float) -> None:
    """Add `counts[i]` observations to bucket `i` of a labelled histogram (the last count: above
    the largest finite bound, i.e. `+Inf`), with `total` their sum: what as many `observe()`
    calls would have added, with one lock per bucket touched instead of two per observation.

    prometheus_client has no public call for this; its histogram keeps one value per bucket
    (`_buckets`, `+Inf` last) and `_sum`, in memory or in multiprocess mode in shared files, and
    both kinds add with `inc`. `test_metrics.py` checks the scraped page against `observe()`.
    """
    buckets = histogram._buckets  # private: see the docstring
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)


def serve_metrics(registry: CollectorRegistry, *, port: int, host: str) -> int:
    """Serve `registry` on http://host:port/metrics in a thread; returns the port (0 picks a
    free one). A port that cannot be bound is an OSError naming `--metrics-port`."""
    try:
        httpd, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise OSError(
            f"--metrics-port: cannot listen on {host}:{port} ({e.strerror or e})"
        ) from None
    return int(httpd.server_port)
