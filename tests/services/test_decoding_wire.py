"""Decoding modes over a real channel: beam search, seeded sampling, stop strings, suggestions,
parameter validation, deadlines and session expiry on a real `recur-serve`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from clients.calls import one_per_token
from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from services.engine import Engine
from services.model import ModelRegistry
from services.requests import TranslateParams
from tests.conftest import Server, start_server, stop_server


@pytest.fixture(scope="module")
def server(speaking_models: Path) -> Iterator[Server]:
    """The tiny bundles, with a translator that writes tokens (conftest's `speaking_models`)."""
    running = start_server(speaking_models, "--session-ttl-seconds", "1")
    yield running
    stop_server(running)


async def _events(call: Any) -> list[Any]:
    """The call's responses, one per token (as the SDK yields them)."""
    return [event async for response in call for event in one_per_token(response)]


async def _messages(call: Any) -> list[Any]:
    return [response async for response in call]


@pytest.mark.parametrize(
    ("interval", "reason"),
    [
        (1, "as produced: what accumulated during a write goes together"),
        (3, "at least three tokens per message after the first"),
        (512, "everything after the first token in one message"),
    ],
)
def test_packing_changes_the_messages_not_the_tokens(
    server: Server, interval: int, reason: str
) -> None:
    """The same greedy requests (a completion, a running sentiment), packed differently: token
    for token the same answers; the
    first token alone in the first message; later messages hold `interval` tokens or more
    (only the last one fewer)."""

    async def go(stream_interval: int) -> list[list[Any]]:
        async with aio.insecure_channel(server.target) as channel:
            completion = pb_grpc.AutocompleteServiceStub(channel)
            sentiment = pb_grpc.SentimentServiceStub(channel)
            return [
                await _messages(completion.Complete(pb.CompleteRequest(
                    text="how to", max_tokens=24, stream_interval=stream_interval), timeout=30)),
                await _messages(sentiment.Analyze(pb.SentimentRequest(
                    text="the acting was good but the plot was not and the music was loud",
                    stream_interval=stream_interval), timeout=30)),
            ]  # fmt: skip

    unpacked, packed = asyncio.run(go(1)), asyncio.run(go(interval))
    for single, several in zip(unpacked, packed, strict=True):
        tokens = [e for m in several for e in one_per_token(m) if m.WhichOneof("event") != "final"]
        expected = [e for m in single for e in one_per_token(m) if m.WhichOneof("event") != "final"]
        assert [(t.token.id, t.token.text) for t in tokens] == [
            (t.token.id, t.token.text) for t in expected
        ], reason
        assert len(tokens) > 1, "the answer must have tokens to pack"
        assert several[0].WhichOneof("event") == "token", "the first token goes alone"
        sizes = [len(one_per_token(m)) for m in several[1:-1]]
        assert all(size >= interval for size in sizes[:-1]), (sizes, reason)
        assert several[-1].WhichOneof("event") == "final"


def complete(target: str, **fields: Any) -> list[pb.CompleteResponse]:
    async def go() -> list[pb.CompleteResponse]:
        async with aio.insecure_channel(target) as channel:
            stub = pb_grpc.AutocompleteServiceStub(channel)
            return await _events(stub.Complete(pb.CompleteRequest(**fields), timeout=30))

    return asyncio.run(go())


def test_beam_translation_over_the_wire_equals_the_engines(
    server: Server, speaking_models: Path
) -> None:
    text = "the small dog sees a red car"

    async def over_the_wire() -> list[pb.TranslateResponse]:
        async with aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.TranslationServiceStub(channel)
            request = pb.TranslateRequest(text=text, beam_size=4, length_penalty=0.6)
            return await _events(stub.Translate(request, timeout=30))

    async def in_process() -> list[Any]:
        engine = Engine(ModelRegistry.load(speaking_models))
        model = engine.registry.resolve("", "translation")
        params = TranslateParams(beam_size=4, length_penalty=0.6)
        stream = engine.translate(model, text, params, arrived=0.0)
        return [e async for batch in stream for e in batch]

    wire, local = asyncio.run(over_the_wire()), asyncio.run(in_process())
    assert len(wire) > 2, "the search found a translation with tokens to compare"
    assert [e.token.id for e in wire[:-1]] == [e.id for e in local[:-1]]
    assert wire[-1].final.text == local[-1].text
    assert wire[-1].final.summary.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


def test_seeded_sampling_is_reproducible(server: Server) -> None:
    def sample(seed: int) -> str:
        events = complete(server.target, text="w", temperature=1.5, seed=seed, max_tokens=12)
        return events[-1].final.completion

    runs = {seed: sample(seed) for seed in range(6)}
    assert sample(3) == runs[3]
    assert len(set(runs.values())) > 1, "different seeds draw different completions"


def test_stop_string_ends_the_completion(server: Server) -> None:
    free = complete(server.target, text="weather in", max_tokens=20)[-1].final.completion
    stop = free[2:4]  # two characters the greedy completion is known to produce
    events = complete(server.target, text="weather in", max_tokens=20, stop=[stop])
    final = events[-1].final
    assert final.completion == free[: free.index(stop) + len(stop)]
    assert final.summary.finish_reason == pb.FINISH_REASON_STOP


def test_min_tokens_decodes_where_the_best_suggestion_is_too_short(server: Server) -> None:
    """The best ranked suggestion, a popular query's ending, is streamed as it is and ends there;
    asked for more tokens than it has, the model decodes the completion instead."""
    free = complete(server.target, text="weather", max_tokens=40, num_suggestions=3)
    ended = len(free) - 1
    assert free[-1].final.summary.finish_reason == pb.FINISH_REASON_STOP, "it ends by itself"
    held = complete(
        server.target, text="weather", max_tokens=40, num_suggestions=3, min_tokens=ended + 3
    )
    assert len(held) - 1 >= ended + 3
    assert held[-1].final.suggestions == free[-1].final.suggestions, "the same ranking"


@pytest.mark.parametrize(("beam", "reason"), [(1, "greedy"), (3, "every beam of a search")])
def test_min_tokens_holds_off_the_end_of_a_translation(
    tiny_models: Path, beam: int, reason: str
) -> None:
    """The tiny trained translator ends every translation at once; asked for at least 5 tokens
    it writes 5 or more."""

    async def translate(params: TranslateParams) -> list[Any]:
        engine = Engine(ModelRegistry.load(tiny_models))
        model = engine.registry.resolve("", "translation")
        stream = engine.translate(model, "the small dog sees a red car", params, arrived=0.0)
        return [e async for batch in stream for e in batch]

    free = asyncio.run(translate(TranslateParams(max_tokens=20, beam_size=beam)))
    held = asyncio.run(translate(TranslateParams(max_tokens=20, beam_size=beam, min_tokens=5)))
    assert len(free) - 1 < 5, "the translator ends early by itself"
    assert len(held) - 1 >= 5, reason
    assert held[-1].output_tokens == len(held) - 1


def test_a_stop_string_does_not_end_a_completion_before_min_tokens(server: Server) -> None:
    free = complete(server.target, text="weather in", max_tokens=20)[-1].final.completion
    stop = free[2:4]  # ends the completion at its fourth character without min_tokens
    events = complete(server.target, text="weather in", max_tokens=20, stop=[stop], min_tokens=8)
    assert len(events) - 1 >= 8
    assert events[-1].final.completion.startswith(free[:4])


def test_suggestions_are_ranked_by_probability(server: Server) -> None:
    events = complete(server.target, text="weather", max_tokens=8, num_suggestions=3)
    suggestions = events[-1].final.suggestions
    assert len(suggestions) == 3
    assert len({s.text for s in suggestions}) == 3
    assert [s.logprob for s in suggestions] == sorted(
        (s.logprob for s in suggestions), reverse=True
    )
    assert all(s.logprob < 0 for s in suggestions)


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"temperature": math.nan}, "temperature", "NaN"),
        ({"temperature": -1.0}, "temperature", "negative"),
        ({"temperature": math.inf}, "temperature", "infinite"),
        ({"top_p": 1.5}, "top_p", "above 1"),
        ({"num_suggestions": 99}, "num_suggestions", "over the beam limit"),
        ({"stop": [""]}, "stop", "empty stop string"),
        ({"stop": ["x"] * 9}, "stop", "too many stop strings"),
        ({"model": "autocomplete@7"}, "", "unknown version"),
        ({"max_tokens": 5, "min_tokens": 6}, "min_tokens", "more than max_tokens"),
        ({"min_tokens": 600}, "min_tokens", "more than the server's default max_tokens"),
    ],
)
def test_bad_decoding_parameters_name_the_field(
    server: Server, fields: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        complete(server.target, text="how", **fields)
    expected = grpc.StatusCode.NOT_FOUND if not field else grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code() == expected, reason
    assert (info.value.details() or "").startswith(field or "model 'autocomplete' has no"), reason


def test_beam_size_over_the_limit_is_invalid(server: Server) -> None:
    async def go() -> None:
        async with aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.TranslationServiceStub(channel)
            await _events(stub.Translate(pb.TranslateRequest(text="a dog", beam_size=9)))

    with pytest.raises(aio.AioRpcError) as info:
        asyncio.run(go())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("beam_size must be in [0, 8]")


def test_pinned_version_and_mean_inter_token_latency(server: Server) -> None:
    final = complete(server.target, text="how", model="autocomplete@1", max_tokens=6)[-1].final
    assert final.summary.version == 1
    tokens = final.summary.output_tokens
    assert (final.summary.timings.mean_inter_token_seconds > 0) == (tokens > 1)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        (True, "idle after its answer"),
        (False, "never sent its first message: it held a place of --max-streams for ever"),
    ],
)
def test_an_idle_session_expires(server: Server, typed: bool, reason: str) -> None:
    async def go() -> tuple[str, grpc.StatusCode, float]:
        async with aio.insecure_channel(server.target) as channel:
            session = pb_grpc.AutocompleteServiceStub(channel).Session()
            if typed:
                await session.write(pb.SessionRequest(text="weather", max_tokens=3))
                while (await session.read()).WhichOneof("event") != "final":
                    pass
            else:
                await session.wait_for_connection()
            started = time.perf_counter()
            with pytest.raises(aio.AioRpcError) as info:
                await asyncio.wait_for(session.read(), 10)  # not expired: TimeoutError
            return info.value.details() or "", info.value.code(), time.perf_counter() - started

    details, code, waited = asyncio.run(go())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, reason
    assert "session idle for more than 1 s" in details, reason
    assert 0.5 < waited < 5, reason


def _gauges(url: str, name: str) -> list[float]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]


def test_expired_and_cancelled_streams_free_their_slots(server: Server) -> None:
    """Completions cut by short deadlines (whether one ends first depends on how fast the
    machine is), a session that holds its slot until its deadline certainly passes, and a
    cancelled completion: afterwards no slot is used and no stream is active."""

    async def go() -> grpc.StatusCode:
        async with aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.AutocompleteServiceStub(channel)
            for timeout in (0.002, 0.01, 0.05):
                request = pb.CompleteRequest(text="weather in", max_tokens=500, temperature=1.0)
                with contextlib.suppress(aio.AioRpcError):
                    await _events(stub.Complete(request, timeout=timeout))
            session = stub.Session(timeout=0.5)
            await session.write(pb.SessionRequest(text="weather", max_tokens=3))
            try:
                while True:  # the session stays open (and holds its slot) until the deadline
                    await session.read()
            except aio.AioRpcError as error:
                code = error.code()
            call = stub.Complete(pb.CompleteRequest(text="weather in", max_tokens=500))
            await call.read()
            call.cancel()
        return code

    assert asyncio.run(go()) == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        used = _gauges(server.metrics_url, "recur_state_slots_used_ratio{")
        active = _gauges(server.metrics_url, "recur_streams_active{")
        if used and not any(used) and not any(active):
            break
        time.sleep(0.05)
    assert used and not any(used), "every slot is back in its pool"
    assert not any(active)
