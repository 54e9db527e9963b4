"""Load and overload: twice the admission limit for a bounded time, a client that stops reading,
and a message over the size limit.

The soak drives `2 * --max-streams` closed-loop clients through all four streaming rpcs with
no client-side retries, so every refusal is seen. It holds when refusals are RESOURCE_EXHAUSTED
and immediate, every admitted stream ends with its final event, no other status code appears,
`recur_streams_active` is back to 0 afterwards and the server's RSS after the soak is within 5 %
of its RSS after a warm-up under the same load. 60 s in `make test`, 10 minutes in the slow run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from clients.sdk import RecurClient, RecurError, RetryPolicy
from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import Server, start_server, stop_server
from tests.reliability.harness import (
    MIB,
    health,
    rss_bytes,
    scrape,
    wait_for_gauge,
)

LIMIT = 8  # --max-streams of the soaked server
RACED = "INTERNAL on a client write (grpc#36066)"


@dataclass
class Tally:
    """What the clients of a soak saw."""

    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    refusal_seconds: list[float] = field(default_factory=list)
    stream_seconds: list[float] = field(default_factory=list)  # of the admitted streams
    truncated: int = 0  # streams that ended without their final event, or failed mid-way
    events: int = 0
    unexpected: list[str] = field(default_factory=list)  # the first few other errors


async def _stream(channel: aio.Channel, turn: int) -> list[Any]:
    """One call of the rpc whose turn it is; returns its events."""
    match turn % 4:
        case 0:
            request = pb.CompleteRequest(text="weather in", max_tokens=16)
            call = pb_grpc.AutocompleteServiceStub(channel).Complete(request, timeout=30)
        case 1:
            request_t = pb.TranslateRequest(text="the small dog sees a red car", max_tokens=16)
            call = pb_grpc.TranslationServiceStub(channel).Translate(request_t, timeout=30)
        case 2:
            request_s = pb.SentimentRequest(text="the acting was good but the plot was not")
            call = pb_grpc.SentimentServiceStub(channel).Analyze(request_s, timeout=30)
        case _:  # explicit writes, as the SDK does (a request iterator that outlives a refused
            # call makes grpc's client report INTERNAL instead of the server's status)
            session = pb_grpc.AutocompleteServiceStub(channel).Session(timeout=30)
            with contextlib.suppress(asyncio.InvalidStateError):  # refused: reading says why
                await session.write(pb.SessionRequest(text="how", max_tokens=6))
                await session.write(pb.SessionRequest(text="how to"))
                await session.done_writing()
            call = session
    return [event async for event in call]


async def _client(target: str, until: float, tally: Tally, offset: int) -> None:
    async with aio.insecure_channel(target) as channel:
        turn = offset
        while time.monotonic() < until:
            started, events = time.perf_counter(), []
            try:
                events = await _stream(channel, turn)
                tally.codes["OK"] += 1
                tally.stream_seconds.append(time.perf_counter() - started)
                finals = [e for e in events if e.WhichOneof("event") == "final"]
                tally.truncated += not events or events[-1].WhichOneof("event") != "final"
                tally.events += len(events)
                assert len(finals) == (2 if turn % 4 == 3 else 1)
            except aio.AioRpcError as error:
                if turn % 4 == 3 and "execute_batch" in (error.debug_error_string() or ""):
                    # grpc#36066: a client write racing the server's refusal turns the status
                    # the server sent into INTERNAL on the client; the server's own count of
                    # the call (checked below) says RESOURCE_EXHAUSTED.
                    tally.codes[RACED] += 1
                    continue
                tally.codes[error.code().name] += 1
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    tally.refusal_seconds.append(time.perf_counter() - started)
                    await asyncio.sleep(0.005)  # a closed loop, not a busy one
                else:
                    tally.truncated += 1
                    if len(tally.unexpected) < 5:
                        tally.unexpected.append(f"rpc {turn % 4} after {len(events)}: {error}")
            turn += 1


def soak(target: str, seconds: float, clients: int = 2 * LIMIT) -> Tally:
    tally = Tally()

    async def go() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_client(target, until, tally, i) for i in range(clients)))

    asyncio.run(go())
    return tally


@pytest.fixture(scope="module")
def limited(tiny_models: Path) -> Iterator[Server]:
    server = start_server(tiny_models, "--max-streams", str(LIMIT))
    yield server
    stop_server(server)


def _codes_served(server: Server) -> collections.Counter[str]:
    """`recur_requests_total` of the streaming rpcs, by code."""
    codes: collections.Counter[str] = collections.Counter()
    for line in scrape(server.metrics_url).splitlines():
        if line.startswith("recur_requests_total{") and 'rpc="ListModels"' not in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            codes[code] += int(float(line.rsplit(" ", 1)[1]))
    return codes


def _soak_holds(server: Server, seconds: float) -> dict[str, object]:
    soak(server.target, min(10.0, seconds / 4))  # warm-up: allocator arenas, ORT buffers
    assert wait_for_gauge(server.metrics_url, "recur_streams_active", 0) == 0
    warm = rss_bytes(server.process.pid)
    counted = _codes_served(server)
    tally = soak(server.target, seconds)
    active = wait_for_gauge(server.metrics_url, "recur_streams_active", 0)
    after = rss_bytes(server.process.pid)
    served = _codes_served(server) - counted
    figures = {
        "seconds": seconds,
        "codes": dict(tally.codes),
        "codes counted by the server": dict(served),
        "unexpected": tally.unexpected,
        "events": tally.events,
        "refusal p50 ms": 1000 * statistics.median(tally.refusal_seconds or [0.0]),
        "refusal max ms": 1000 * max(tally.refusal_seconds or [0.0]),
        "admitted stream p50 ms": 1000 * statistics.median(tally.stream_seconds or [0.0]),
        "rss warm MiB": warm / MIB,
        "rss after MiB": after / MIB,
        "rss change %": 100 * (after - warm) / warm,
    }
    print("soak:", figures)
    assert set(tally.codes) <= {"OK", "RESOURCE_EXHAUSTED", RACED}, figures
    assert set(served) == {"OK", "RESOURCE_EXHAUSTED"}, served
    assert tally.codes[RACED] == served["RESOURCE_EXHAUSTED"] - tally.codes["RESOURCE_EXHAUSTED"]
    assert served["OK"] == tally.codes["OK"]
    assert tally.codes["OK"] > 0 and tally.codes["RESOURCE_EXHAUSTED"] > 0, figures
    assert tally.truncated == 0, figures
    refused = statistics.median(tally.refusal_seconds)
    assert refused < statistics.median(tally.stream_seconds), "refused at once, not queued"
    assert active == 0
    assert abs(after - warm) <= 0.05 * warm, figures
    assert health(server.target) == "SERVING"
    return figures


def test_twice_the_admission_limit_for_a_minute(limited: Server) -> None:
    _soak_holds(limited, 60.0)


@pytest.mark.slow
def test_twice_the_admission_limit_for_ten_minutes(tiny_models: Path) -> None:
    server = start_server(tiny_models, "--max-streams", str(LIMIT))
    try:
        _soak_holds(server, 600.0)
    finally:
        stop_server(server)


def test_a_client_that_stops_reading_cannot_make_the_server_buffer(limited: Server) -> None:
    """A session client that writes as fast as it can and never reads. Each message is answered
    (superseded by the next) as fast as the server gets to it, but the messages waiting to be
    answered are bounded: past a warm-up the server's memory stays flat however many more come.
    """
    text = "weather in " * 170  # 1,870 characters, under --max-input-chars

    async def flood() -> list[int]:
        rss = []
        async with aio.insecure_channel(limited.target) as channel:
            call = pb_grpc.AutocompleteServiceStub(channel).Session(timeout=120)
            for i in range(12_000):
                # A write waits while the server pushes back (it stops reading while 32
                # messages wait to be answered). No timeout of its own: gRPC cancels the whole
                # call when a write is cancelled; the call's deadline bounds a server that
                # never reads again.
                await call.write(pb.SessionRequest(text=text + str(i), max_tokens=8))
                if i in (4_000, 11_999):
                    rss.append(rss_bytes(limited.process.pid))
            call.cancel()
        return rss

    before = rss_bytes(limited.process.pid)
    warm, end = asyncio.run(flood())
    print(f"slow consumer: server RSS {(warm - before) / MIB:+.1f} MiB after 4,000 messages, "
          f"{(end - warm) / MIB:+.1f} MiB over the next 8,000")  # fmt: skip
    assert end - warm < 3 * MIB, "memory grows with every message the client writes"
    assert wait_for_gauge(limited.metrics_url, "recur_streams_active", 0) == 0


def test_a_message_over_the_size_limit_is_refused_without_harming_other_streams(
    limited: Server,
) -> None:
    async def go() -> tuple[grpc.StatusCode, list[str]]:
        async with aio.insecure_channel(limited.target) as channel:
            stub = pb_grpc.AutocompleteServiceStub(channel)
            session = stub.Session(timeout=60)
            reasons = []

            async def answer(text: str) -> None:
                await session.write(pb.SessionRequest(text=text, max_tokens=3))
                while (response := await session.read()).WhichOneof("event") != "final":
                    pass
                reasons.append(pb.FinishReason.Name(response.final.summary.finish_reason))

            await answer("wea")
            huge = pb.CompleteRequest(text="x" * (2 * MIB))  # twice --max-message-bytes
            with pytest.raises(aio.AioRpcError) as info:
                [e async for e in stub.Complete(huge, timeout=30)]
            await answer("weather")  # the stream in flight on the same connection goes on
            await session.done_writing()
            assert await session.read() is aio.EOF
            return info.value.code(), reasons

    code, reasons = asyncio.run(go())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(reasons) == 2 and set(reasons) <= {"FINISH_REASON_LENGTH", "FINISH_REASON_STOP"}
    assert wait_for_gauge(limited.metrics_url, "recur_streams_active", 0) == 0


def test_a_refused_session_says_why_through_the_sdk(limited: Server) -> None:
    """A session opened while the server is full: the SDK's `send_text` raises RecurError with
    RESOURCE_EXHAUSTED (it raised asyncio.InvalidStateError once the call had ended)."""

    async def go() -> tuple[str, str]:
        async with aio.insecure_channel(limited.target) as channel:
            holders = [pb_grpc.AutocompleteServiceStub(channel).Session() for _ in range(LIMIT)]
            for holder in holders:  # every place taken, each by a session in flight
                await holder.write(pb.SessionRequest(text="how", max_tokens=2))
                while (await holder.read()).WhichOneof("event") != "final":
                    pass
            async with RecurClient(limited.target, retry=RetryPolicy(max_attempts=1)) as client:
                session = client.session(max_tokens=2)
                with pytest.raises(RecurError) as reading:  # returns once the refusal arrived
                    [event async for event in session]
                with pytest.raises(RecurError) as sending:  # to a call that has ended
                    await session.send_text("how")
            for holder in holders:
                holder.cancel()
        return sending.value.code.name, reading.value.code.name

    assert asyncio.run(go()) == ("RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED")
    assert wait_for_gauge(limited.metrics_url, "recur_streams_active", 0) == 0
