"""The synchronous client against a real grpc.aio server of fakes (see conftest.py)."""

from __future__ import annotations

import threading

import grpc
import pytest

from clients import RecurClientSync, RecurError


def test_every_call_of_the_sync_client(target: str) -> None:
    with RecurClientSync(target, token="t") as client:
        translation = list(client.translate("the black cat", include_attention=True))
        sentiment = list(client.sentiment("not good"))
        completion = list(client.complete("once", max_tokens=2))
        models = client.list_models()
        health = client.health()
    assert [e.token.text for e in translation[:3]] == ["le", " chat", " noir"]
    assert list(translation[1].token.attention) == pytest.approx([0.1, 0.1, 0.8])
    assert translation[-1].final.text == "le chat noir"
    assert [e.token.label for e in sentiment[:2]] == ["negative", "positive"]
    assert sentiment[-1].final.label == "positive"
    assert completion[-1].final.completion == " upon a"
    assert [m.name for m in models.models] == ["en-fr", "sst2"]
    assert health == "SERVING"


def test_sync_session_sends_texts_and_edits(target: str) -> None:
    with RecurClientSync(target) as client:
        session = client.session(model="lm")
        session.send_text("hel")
        session.send_edit(3, 3, "lo")
        session.close()
        responses = list(session)
    finals = [(r.revision, r.final.completion) for r in responses if r.HasField("final")]
    assert finals == [(1, " 3 chars"), (2, " 5 chars")]


def test_sync_errors_and_deadlines_are_recur_errors(target: str) -> None:
    client = RecurClientSync(target, timeout=0.3)
    with pytest.raises(RecurError) as missing:
        list(client.translate("x", model="missing"))
    with pytest.raises(RecurError) as slow:
        list(client.translate("x", model="slow"))
    client.close()
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert slow.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_leaving_a_sync_stream_early_cancels_it(target: str, gate: threading.Event) -> None:
    with RecurClientSync(target, timeout=20) as client:
        events = client.translate("x", model="gated")
        first = next(events)
        events.close()  # the stream is held after its first token: closing must not wait
        assert first.token.text == "le"
        assert client.health() == "SERVING"


def test_closed_sync_client_says_so(target: str) -> None:
    client = RecurClientSync(target)
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.list_models()
