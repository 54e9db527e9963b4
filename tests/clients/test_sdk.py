"""The async SDK against a real grpc.aio server of fakes (see conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2

from clients import RecurClient, RecurError
from clients.health_wire import decode_health_response, encode_health_request
from protos.recur.v1 import inference_pb2 as pb

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def collect(events: AsyncIterator[T]) -> list[T]:
    return [event async for event in events]


def test_translate_streams_tokens_then_final(target: str) -> None:
    async def scenario() -> list[pb.TranslateResponse]:
        async with RecurClient(target) as client:
            return await collect(client.translate("the black cat"))

    events = run(scenario())
    assert [e.WhichOneof("event") for e in events] == ["token", "token", "token", "final"]
    assert [e.token.text for e in events[:3]] == ["le", " chat", " noir"]
    assert [e.token.index for e in events[:3]] == [0, 1, 2]
    assert all(not e.token.attention for e in events[:3])
    final = events[-1].final
    assert final.text == "le chat noir"
    assert list(final.source_tokens) == ["the", "black", "cat"]
    assert (final.summary.model, final.summary.version) == ("fake-translate", 1)
    assert final.summary.finish_reason == pb.FINISH_REASON_STOP


def test_translate_passes_model_and_attention(target: str) -> None:
    async def scenario() -> list[pb.TranslateResponse]:
        async with RecurClient(target) as client:
            return await collect(client.translate("x", model="en-fr", include_attention=True))

    events = run(scenario())
    assert list(events[1].token.attention) == pytest.approx([0.1, 0.1, 0.8])
    assert events[-1].final.summary.model == "en-fr"


def test_sentiment_streams_running_labels(target: str) -> None:
    async def scenario() -> list[pb.SentimentResponse]:
        async with RecurClient(target) as client:
            return await collect(client.sentiment("not good"))

    events = run(scenario())
    assert [(e.token.text, e.token.label) for e in events[:2]] == [
        ("not", "negative"),
        ("good", "positive"),
    ]
    assert events[-1].final.label == "positive"
    assert list(events[-1].final.labels) == ["negative", "positive"]


@pytest.mark.parametrize(
    ("max_tokens", "completion", "reason"),
    [
        (0, " upon a time", pb.FINISH_REASON_STOP),
        (2, " upon a", pb.FINISH_REASON_LENGTH),
    ],
    ids=["server-default-runs-to-stop", "max-tokens-cuts-at-length"],
)
def test_complete(target: str, max_tokens: int, completion: str, reason: int) -> None:
    async def scenario() -> list[pb.CompleteResponse]:
        async with RecurClient(target) as client:
            return await collect(client.complete("once", max_tokens=max_tokens))

    events = run(scenario())
    assert "".join(e.token.text for e in events[:-1]) == completion
    assert events[-1].final.completion == completion
    assert events[-1].final.summary.finish_reason == reason


def test_session_answers_each_text_and_edit(target: str) -> None:
    async def scenario() -> list[pb.SessionResponse]:
        async with RecurClient(target) as client:
            session = client.session(model="lm", max_tokens=4)
            await session.send_text("hel")
            await session.send_text("hello")
            await session.send_edit(5, 5, " world")
            await session.close()
            return [response async for response in session]

    responses = run(scenario())
    finals = [(r.revision, r.final.completion) for r in responses if r.HasField("final")]
    assert finals == [(1, " 3 chars"), (2, " 5 chars"), (3, " 11 chars")]
    assert {r.final.summary.model for r in responses if r.HasField("final")} == {"lm"}
    assert [r.token.text for r in responses if r.revision == 1 and r.HasField("token")] == [
        " 3",
        " chars",
    ]


def test_list_models(target: str) -> None:
    async def scenario() -> pb.ListModelsResponse:
        async with RecurClient(target) as client:
            return await client.list_models()

    models = run(scenario()).models
    assert [(m.name, m.version, m.task, m.cell, m.is_default) for m in models] == [
        ("en-fr", 3, "translation", "gru", True),
        ("sst2", 1, "sentiment", "lstm", False),
    ]
    assert dict(models[0].metrics) == {
        "valid_bleu": 31.25,
        "test_bleu": 29.0,
        "valid_bleu_beam": 33.5,
        "valid_loss": 1.5,
        "grad_norm_max": 2.0,
    }


@pytest.mark.parametrize(
    ("service", "status"),
    [("", "SERVING"), ("recur.v1.SentimentService", "NOT_SERVING")],
    ids=["server", "one-service"],
)
def test_health(target: str, service: str, status: str) -> None:
    async def scenario() -> str:
        async with RecurClient(target) as client:
            return await client.health(service)

    assert run(scenario()) == status


async def _first_error(target: str, *, timeout: float, call: str) -> RecurError:
    async with RecurClient(target, timeout=timeout) as client:
        with pytest.raises(RecurError) as caught:
            if call == "translate-missing":
                await collect(client.translate("x", model="missing"))
            elif call == "translate-slow":
                await collect(client.translate("x", model="slow"))
            elif call == "health-unknown":
                await client.health("no.such.Service")
            else:
                await client.list_models()
        return caught.value


@pytest.mark.parametrize(
    ("call", "code", "details", "text"),
    [
        (
            "translate-missing",
            grpc.StatusCode.NOT_FOUND,
            "unknown model 'missing'",
            "NOT_FOUND: unknown model 'missing'",
        ),
        (
            "translate-slow",
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            "DEADLINE_EXCEEDED: Deadline Exceeded",
        ),
        ("health-unknown", grpc.StatusCode.NOT_FOUND, "", "NOT_FOUND"),
    ],
    ids=["unknown-model", "deadline-from-timeout", "unknown-health-service-has-no-details"],
)
def test_rpc_errors_become_recur_errors(
    target: str, call: str, code: grpc.StatusCode, details: str, text: str
) -> None:
    error = run(_first_error(target, timeout=0.5, call=call))
    assert (error.code, error.details, str(error)) == (code, details, text)


def test_unreachable_server_is_unavailable(closed_target: str) -> None:
    error = run(_first_error(closed_target, timeout=5, call="list-models"))
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert closed_target in error.details


@pytest.mark.parametrize(
    ("call", "fields", "named"),
    [
        ("complete", {"max_tokens": -1}, "max_tokens=-1"),
        ("complete", {"seed": 2**64}, f"seed={2**64}"),
        ("translate", {"min_tokens": 2**32}, f"min_tokens={2**32}"),
        ("session", {"num_suggestions": -2}, "num_suggestions=-2"),
    ],
)
def test_a_value_its_field_cannot_hold_is_named_before_anything_is_sent(
    closed_target: str, call: str, fields: dict[str, Any], named: str
) -> None:
    async def go() -> None:
        async with RecurClient(closed_target) as client:
            getattr(client, call)(**({} if call == "session" else {"text": "x"}), **fields)

    with pytest.raises(ValueError, match=named):
        run(go())


def test_closing_a_session_that_could_not_start_leaves_the_reason_to_the_read(
    closed_target: str,
) -> None:
    """Closing a session whose server is unreachable does nothing (grpcio raised its own
    ExecuteBatchError there); reading it says why, as a RecurError."""

    async def go() -> RecurError:
        async with RecurClient(closed_target, timeout=5) as client:
            session = client.session()
            await session.close()
            with pytest.raises(RecurError) as error:
                await anext(session)
            return error.value

    assert run(go()).code == grpc.StatusCode.UNAVAILABLE


def test_calls_outside_async_with_say_how_to_open() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        run(RecurClient().list_models())


@pytest.mark.parametrize(
    ("service", "reason"),
    [
        ("", "proto3 leaves the empty default out"),
        ("recur.v1.TranslationService", "one-byte length"),
        ("s" * 300, "two-byte varint length"),
        ("é", "length counts UTF-8 bytes"),
    ],
)
def test_health_request_matches_protobuf(service: str, reason: str) -> None:
    expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert encode_health_request(service) == expected, reason


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"", "UNKNOWN", "proto3 leaves UNKNOWN (0) out"),
        (b"\x08\x01", "SERVING", "field 1 varint"),
        (b"\x08\x02", "NOT_SERVING", "field 1 varint"),
        (b"\x08\x03", "SERVICE_UNKNOWN", "field 1 varint"),
        (b"\x12\x02ab\x08\x01\x1d\x00\x00\x00\x00", "SERVING", "unknown fields are skipped"),
        (b"\x08\x07", "7", "a newer status shows as its number"),
    ],
)
def test_decode_health_response(data: bytes, status: str, reason: str) -> None:
    assert decode_health_response(data) == status, reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"\x08", "truncated varint"), (b"\x12\x05ab", "truncated field"), (b"\x0b", "group")],
)
def test_decode_health_response_rejects_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError):
        decode_health_response(data)


def test_decode_health_response_reads_real_messages() -> None:
    for status in ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"):
        message = health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.ServingStatus.Value(status)
        )
        assert decode_health_response(message.SerializeToString()) == status
