"""Streams abandoned the way real front ends abandon them give back everything they held.

A busy autocomplete front end opens a `Session` per text box, writes the text a character at a
time and walks away whenever the user does: it cancels the call after a few writes, lets a tiny
deadline expire, half-closes before or after the last answer, or simply stops reading. The churn
below does all of that from many concurrent clients (and, in the mixed variant, the same to the
three other streaming rpcs). Afterwards every gauge of work in progress is back to 0 within a
second, the server admits a full `--max-streams` of new streams, and a fixed greedy request
answers exactly as it did before the churn.

The session TTL reclaims a session whatever its handler is doing: a session whose client reads
nothing, so that its handler is stuck behind a write that never completes, is closed after the
TTL and gives its slot back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from clients.sdk import RecurClient, RecurError, RetryPolicy
from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import Server, start_server, stop_server
from tests.reliability.harness import gauge_sum, scrape, wait_for_gauge

LIMIT = 32  # --max-streams of the churned server
TTL = 2.0  # --session-ttl-seconds
GAUGES = ("recur_streams_active", "recur_streams_waiting", "recur_state_slots_used_ratio")
WORDS = ["how", "to", "make", "a", "cake", "without", "eggs"]


@pytest.fixture(scope="module")
def churned(tiny_models: Path) -> Iterator[Server]:
    server = start_server(
        tiny_models, "--max-streams", str(LIMIT), "--session-ttl-seconds", str(TTL)
    )
    yield server
    stop_server(server)


async def _drain(call: Any, limit: int | None = None) -> int:
    """Read up to `limit` responses (all when None); returns how many were read."""
    seen = 0
    async for _ in call:
        seen += 1
        if limit is not None and seen >= limit:
            break
    return seen


async def _session(channel: aio.Channel, rng: random.Random) -> str:
    """One session abandoned in one of the ways a typing user abandons it; returns which."""
    text = " ".join(WORDS[: rng.randint(1, len(WORDS))])
    writes = rng.randint(1, min(8, len(text)))
    way = rng.choice(
        ("typing", "cancel", "deadline", "half-close", "half-close-late", "stop-reading")
    )
    timeout = rng.uniform(0.001, 0.02) if way == "deadline" else 30.0
    call = pb_grpc.AutocompleteServiceStub(channel).Session(timeout=timeout)
    stop_after = rng.randint(0, writes)
    try:
        if way == "typing":  # waits for each answer, then cancels right after a keystroke
            await _typing(call, text, writes, stop_after, rng.choice((0.0, 0.001, 0.003)))
            return way
        for i in range(writes):
            if way == "cancel" and i == stop_after:
                call.cancel()
                return way
            first = {"num_suggestions": 2, "max_tokens": 8} if i == 0 else {}
            await call.write(pb.SessionRequest(text=text[: i + 1 + len(text) - writes], **first))
        match way:
            case "cancel":
                await _drain(call, rng.randint(0, 3) or None)
                call.cancel()
            case "half-close":  # half-close at once, then read everything
                await call.done_writing()
                await _drain(call)
            case "half-close-late":  # read the first answers, then half-close and cancel
                await _drain(call, rng.randint(1, 4))
                await call.done_writing()
                call.cancel()
            case "stop-reading":  # never read; drop the call with the server mid-write
                await asyncio.sleep(rng.uniform(0.0, 0.05))
                call.cancel()
            case _:
                await _drain(call)
    except (aio.AioRpcError, asyncio.InvalidStateError):
        pass  # expected: a deadline, or a write after the call ended
    return way


async def _typing(call: Any, text: str, writes: int, stop_after: int, pause: float) -> None:
    """Type `writes` characters, reading each answer to its final event, and cancel just after
    keystroke `stop_after` (after `pause` seconds): the cancel then reaches a session that was
    idle, waiting for the next keystroke, about when that keystroke does (the interleaving that
    leaked)."""
    for i in range(writes):
        first = {"num_suggestions": 2, "max_tokens": 8} if i == 0 else {}
        await call.write(pb.SessionRequest(text=text[: i + 1 + len(text) - writes], **first))
        if i == stop_after:
            await asyncio.sleep(pause)
            call.cancel()
            return
        async for response in call:
            if response.WhichOneof("event") == "final":
                break
    call.cancel()


async def _other(channel: aio.Channel, rng: random.Random) -> str:
    """A Translate, Analyze or Complete call cancelled after 0..3 events, or with a tiny
    deadline."""
    timeout = rng.choice((rng.uniform(0.001, 0.02), 30.0))
    match rng.randrange(3):
        case 0:
            call: Any = pb_grpc.TranslationServiceStub(channel).Translate(
                pb.TranslateRequest(text="the small dog sees a red car", max_tokens=12),
                timeout=timeout,
            )
        case 1:
            call = pb_grpc.SentimentServiceStub(channel).Analyze(
                pb.SentimentRequest(text="the acting was good but the plot was not"),
                timeout=timeout,
            )
        case _:
            call = pb_grpc.AutocompleteServiceStub(channel).Complete(
                pb.CompleteRequest(text="how to", max_tokens=12, num_suggestions=2),
                timeout=timeout,
            )
    with contextlib.suppress(aio.AioRpcError):
        await _drain(call, rng.randint(0, 3) or None)
    call.cancel()
    return "other"


def churn(target: str, seconds: float, *, clients: int = 48, mixed: bool = False) -> dict[str, int]:
    """`clients` concurrent clients on one channel abandoning streams for `seconds`; counts by
    way."""
    counts: collections.Counter[str] = collections.Counter()

    async def client(channel: aio.Channel, seed: int) -> None:
        rng = random.Random(seed)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            pick = _other if mixed and rng.random() < 0.5 else _session
            with contextlib.suppress(aio.AioRpcError):
                counts[await pick(channel, rng)] += 1

    async def go() -> None:
        # One connection, as a front end's channel: the frames of many streams (a keystroke of
        # one, the cancel of another) arrive together and are handled in the same loop turn.
        async with aio.insecure_channel(target) as channel:
            await asyncio.gather(*(client(channel, seed) for seed in range(clients)))

    asyncio.run(go())
    return dict(counts)


def _greedy(target: str) -> list[str]:
    """A fixed greedy completion and its suggestions, as text."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.AutocompleteServiceStub(channel)
        request = pb.CompleteRequest(text="how to", max_tokens=12, num_suggestions=3)
        events = list(stub.Complete(request, timeout=30))
    final = events[-1].final
    return [final.completion, *(s.text for s in final.suggestions)]


def _full_admission(target: str) -> int:
    """Open `LIMIT` sessions at once and get an answer on each: how many were admitted."""

    async def go() -> int:
        async with aio.insecure_channel(target) as channel:
            stub = pb_grpc.AutocompleteServiceStub(channel)
            calls = [stub.Session(timeout=30) for _ in range(LIMIT)]
            for call in calls:
                await call.write(pb.SessionRequest(text="how", max_tokens=2))
            answered = 0
            for call in calls:
                async for response in call:
                    if response.WhichOneof("event") == "final":
                        answered += 1
                        break
            for call in calls:
                await call.done_writing()
                await _drain(call)
            return answered

    return asyncio.run(go())


def _settles(server: Server) -> dict[str, float]:
    """Every in-progress gauge, waited for up to a second to reach 0."""
    return {name: wait_for_gauge(server.metrics_url, name, 0, within=1.0) for name in GAUGES}


def _holds(server: Server, seconds: float, *, mixed: bool) -> None:
    before = _greedy(server.target)
    counts = churn(server.target, seconds, mixed=mixed)
    settled = _settles(server)
    print("churn:", counts, "gauges after:", settled)
    assert sum(counts.values()) > 50, counts
    assert settled == dict.fromkeys(GAUGES, 0), f"leaked after {counts}: {settled}"
    assert _full_admission(server.target) == LIMIT  # the admission count is back to 0 too
    assert _greedy(server.target) == before


def test_churned_sessions_give_everything_back(churned: Server) -> None:
    _holds(churned, 12.0, mixed=False)


def test_churned_streams_of_every_rpc_give_everything_back(churned: Server) -> None:
    _holds(churned, 8.0, mixed=True)


def test_calls_rejected_and_dropped_at_once_leave_no_traceback(tiny_models: Path) -> None:
    """Most calls to a full server are refused (RESOURCE_EXHAUSTED), and under churn many of
    their clients are gone before the status leaves. gRPC logged each such call as an error
    with a traceback, about 700 lines in 8 s here, which filled the test's unread log pipe and
    blocked the server's event loop: every stream in flight then held its slot for good.
    Such a call now ends quietly as cancelled."""
    server = start_server(tiny_models, "--max-streams", "4")
    try:
        counts = churn(server.target, 6.0, mixed=True)
        settled = _settles(server)
    finally:
        output = stop_server(server)
    assert sum(counts.values()) > 50, counts
    assert settled == dict.fromkeys(GAUGES, 0), f"leaked after {counts}: {settled}"
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.slow
def test_churn_for_two_minutes(tiny_models: Path) -> None:
    server = start_server(tiny_models, "--max-streams", str(LIMIT))
    try:
        _holds(server, 60.0, mixed=False)
        _holds(server, 60.0, mixed=True)
    finally:
        stop_server(server)


def test_the_ttl_reclaims_a_session_whose_handler_is_stuck(churned: Server) -> None:
    """A client writes once and never reads, with a flow-control window of 64 bytes: the
    server's handler blocks in a write that cannot complete. The TTL still ends the session
    and gives its place back; the client, reading at last, finds a cut answer with no final
    event."""
    # The window stays 64 bytes: no lookahead beyond it, no BDP probe to grow it.
    options = [("grpc.http2.lookahead_bytes", 64), ("grpc.http2.bdp_probe", 0)]

    async def go() -> tuple[float, list[str], str]:
        async with aio.insecure_channel(churned.target, options=options) as channel:
            call = pb_grpc.AutocompleteServiceStub(channel).Session(timeout=60)
            await call.write(pb.SessionRequest(text="how to make a", max_tokens=200))
            deadline = time.monotonic() + 10
            while gauge_sum(churned.metrics_url, "recur_streams_active") < 1:
                assert time.monotonic() < deadline, "the session never started"
                await asyncio.sleep(0.02)
            started = time.monotonic()
            while gauge_sum(churned.metrics_url, "recur_streams_active") > 0:
                assert time.monotonic() - started < TTL + 3, "the TTL did not reclaim it"
                await asyncio.sleep(0.05)
            reclaimed = time.monotonic() - started
            events, code = [], ""
            try:
                async for response in call:
                    events.append(response.WhichOneof("event"))
            except aio.AioRpcError as error:
                code = error.code().name
            return reclaimed, events, code

    reclaimed, events, code = asyncio.run(go())
    print(f"reclaimed after {reclaimed:.2f} s; the client then read {len(events)} events, {code}")
    assert "final" not in events, "the handler was not stuck: it finished its answer"
    assert code in ("CANCELLED", "DEADLINE_EXCEEDED"), code
    assert _settles(churned) == dict.fromkeys(GAUGES, 0)


def test_the_sdk_reports_the_status_the_server_sent(tiny_models: Path) -> None:
    """Sessions refused while their client is still writing: grpcio replaces the server's
    RESOURCE_EXHAUSTED with its own INTERNAL when a write was in flight (grpc/grpc#36066); the
    SDK reports the status the server sent, so its counts are the server's own."""
    server = start_server(tiny_models, "--max-streams", "2")
    codes: collections.Counter[str] = collections.Counter()

    async def client(until: float) -> None:
        async with RecurClient(server.target, retry=RetryPolicy(max_attempts=1)) as sdk:
            while time.monotonic() < until:
                try:
                    session = sdk.session(max_tokens=4)
                    await session.send_text("how")
                    await session.send_text("how to")
                    await session.close()
                    async for _ in session:
                        pass
                    codes["OK"] += 1
                except RecurError as error:
                    codes[error.code.name] += 1

    async def go() -> None:
        until = time.monotonic() + 8
        await asyncio.gather(*(client(until) for _ in range(12)))

    try:
        asyncio.run(go())
        served = collections.Counter[str]()
        for line in scrape(server.metrics_url).splitlines():
            if line.startswith("recur_requests_total{") and 'rpc="Session"' in line:
                code = line.split('code="', 1)[1].split('"', 1)[0]
                served[code] += int(float(line.rsplit(" ", 1)[1]))
    finally:
        stop_server(server)
    print("sdk saw", dict(codes), "server counted", dict(served))
    assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > 0, codes
    assert set(served) == {"OK", "RESOURCE_EXHAUSTED"}, served
    assert codes["OK"] == served["OK"] and set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "INTERNAL"}
    # Rarely grpcio keeps only its own INTERNAL, the server's status never recorded on the
    # call (4 of 4,688 refusals in one CI run, none in 18,000 here): the SDK cannot recover a
    # status that grpcio dropped, so those few may say INTERNAL, and nothing else may.
    assert codes["RESOURCE_EXHAUSTED"] + codes["INTERNAL"] == served["RESOURCE_EXHAUSTED"], codes
    assert codes["INTERNAL"] <= 0.005 * served["RESOURCE_EXHAUSTED"], codes
