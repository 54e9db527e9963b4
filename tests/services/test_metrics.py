"""The server's metrics as Prometheus scrapes them: a stream's tokens and inter-message gaps are
counted in the stream and handed over in bulk (`StreamMeter`), and the page must read exactly as
if every message had been observed one by one."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncGenerator, Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.events import Event, Finished, FinishReason, TokenEvent
from services.metrics import LATENCY_BUCKETS, CallInfo, ServerMetrics, add_observations

LABELS = {"model": "m", "version": "1", "task": "autocomplete", "rpc": "Complete"}
INFO = CallInfo("Complete", model="m", version="1", task="autocomplete")
# Below, on and just above bucket bounds (a bound belongs to its own bucket), and past 60 s.
GAPS = [0.0, 4e-5, 5e-5, 5.0001e-5, 0.003, 0.0032, 1.0, 15.0, 30.5, 60.0, 61.0, 3600.0]


def page(registry: CollectorRegistry, name: str) -> list[str]:
    return sorted(
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(name) and not line.startswith(f"{name}_created")
    )


def test_bulk_observations_read_as_one_observe_each() -> None:
    one_by_one, bulk = ServerMetrics(CollectorRegistry()), ServerMetrics(CollectorRegistry())
    for gap in GAPS:
        one_by_one.itl.labels(**LABELS).observe(gap)
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for gap in GAPS:
        counts[bisect.bisect_left(LATENCY_BUCKETS, gap)] += 1
    add_observations(bulk.itl.labels(**LABELS), counts, sum(GAPS))
    name = "recur_inter_token_latency_seconds"
    assert page(bulk.registry, name) == page(one_by_one.registry, name)
    assert f'{name}_count{{model="m",rpc="Complete",task="autocomplete",version="1"}} 12.0' in (
        page(bulk.registry, name)
    )


class Clock:
    """`time.perf_counter` for the metrics module, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(time, "perf_counter", fake)
    yield fake


def token(index: int) -> TokenEvent:
    return TokenEvent(index, 7, "a", -0.5)


FINAL = Finished(FinishReason.LENGTH, "aaaa", 3, 4, "m", 1, 0.002, 0.004, 0.1)


def test_a_stream_counts_its_tokens_and_the_gaps_between_its_messages(clock: Clock) -> None:
    metrics = ServerMetrics(CollectorRegistry())
    # Messages: one token, then two, then one, then the final event alone.
    messages: list[tuple[float, list[Event]]] = [
        (0.001, [token(0)]), (0.003, [token(1), token(2)]), (0.0005, [token(3)]), (0.01, [FINAL]),
    ]  # fmt: skip

    async def stream() -> AsyncGenerator[list[Event], None]:
        for advance, batch in messages:
            clock.now += advance
            yield batch

    async def drain() -> None:
        async for _ in metrics.observe(stream(), INFO):
            pass

    asyncio.run(drain())
    value = metrics.registry.get_sample_value
    assert value("recur_generated_tokens_total", LABELS) == 4
    assert value("recur_inter_token_latency_seconds_count", LABELS) == 2  # 3 token messages
    assert value("recur_inter_token_latency_seconds_sum", LABELS) == pytest.approx(0.0035)
    assert value("recur_inter_token_latency_seconds_bucket", {**LABELS, "le": "0.0004"}) == 0
    assert value("recur_inter_token_latency_seconds_bucket", {**LABELS, "le": "0.0008"}) == 1
    assert value("recur_inter_token_latency_seconds_bucket", {**LABELS, "le": "0.0032"}) == 2
    assert value("recur_input_tokens_total", LABELS) == 3
    assert value("recur_time_to_first_token_seconds_count", LABELS) == 1
    assert value("recur_streams_active", {k: v for k, v in LABELS.items() if k != "rpc"}) == 0


def test_a_long_stream_shows_its_tokens_before_it_ends(clock: Clock) -> None:
    metrics = ServerMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    seen: list[float | None] = []

    async def stream() -> AsyncGenerator[list[Event], None]:
        for index in range(5):
            clock.now += 0.4  # a token every 0.4 s: a flush after the third
            yield [token(index)]
            seen.append(value("recur_generated_tokens_total", LABELS))
        yield [FINAL]

    async def drain() -> None:
        async for _ in metrics.observe(stream(), INFO):
            pass

    asyncio.run(drain())
    assert seen == [0, 0, 3, 3, 3]
    assert value("recur_generated_tokens_total", LABELS) == 5  # the rest at the end
    assert value("recur_inter_token_latency_seconds_count", LABELS) == 4


def test_a_stream_that_fails_midway_still_hands_over_what_it_counted(clock: Clock) -> None:
    metrics = ServerMetrics(CollectorRegistry())

    async def stream() -> AsyncGenerator[list[Event], None]:
        yield [token(0)]
        clock.now += 0.001
        yield [token(1)]
        raise RuntimeError("the step failed")

    async def drain() -> None:
        async for _ in metrics.observe(stream(), INFO):
            pass

    with pytest.raises(RuntimeError, match="the step failed"):
        asyncio.run(drain())
    assert metrics.registry.get_sample_value("recur_generated_tokens_total", LABELS) == 2
    assert metrics.registry.get_sample_value("recur_inter_token_latency_seconds_count", LABELS) == 1


def test_recording_off_records_nothing_and_still_closes_the_stream(clock: Clock) -> None:
    metrics = ServerMetrics(CollectorRegistry(), recording=False)
    closed = []

    async def stream() -> AsyncGenerator[list[Event], None]:
        try:
            for index in range(10):
                yield [token(index)]
        finally:
            closed.append(True)

    async def first_only() -> None:
        observed = metrics.observe(stream(), INFO)
        async for _ in observed:
            break
        await observed.aclose()

    asyncio.run(first_only())
    assert closed == [True]  # closed with its consumer, not left to garbage collection
    assert metrics.registry.get_sample_value("recur_generated_tokens_total", LABELS) is None
