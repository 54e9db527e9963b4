"""The contract test: train tiny → export → real `recur-serve` on 127.0.0.1:0 → stream from every
rpc over a real channel, and check the streams against the PyTorch model they were exported from.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from clients.sdk import RecurClient, RecurError
from protos.recur.v1 import inference_pb2 as pb
from tests.conftest import Server, start_server, stop_server, untrained_checkpoint
from trainer.data.tokenizer import BOS_ID, EOS_ID
from trainer.export import rebuild_model
from trainer.models.seq2seq import greedy_decode


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def collect(stream: Any) -> list[Any]:
    return [event async for event in stream]


async def call(target: str, method: Any) -> list[Any]:
    """Open a client, run `method(client)` and collect its stream."""
    async with RecurClient(target) as client:
        return await collect(method(client))


def load_torch(models: Path, task: str) -> tuple[Any, Any]:
    """The PyTorch model a bundle was exported from, rebuilt from the run's checkpoint."""
    import json

    from tokenizers import Tokenizer

    from trainer.checkpoint import load

    bundle = models / task / "1"
    manifest = json.loads((bundle / "manifest.json").read_text())
    runs = Path(json.loads(manifest["training"]["config_json"])["run_dir"])
    checkpoint = load(next(runs.glob(f"{task}-*/checkpoint.pt")))
    return rebuild_model(checkpoint), Tokenizer.from_file(str(bundle / "tokenizer.json"))


@pytest.fixture(scope="module")
def speaking(speaking_models: Path) -> Iterator[Server]:
    """A server whose translator writes tokens (conftest's `speaking_models`)."""
    server = start_server(speaking_models)
    yield server
    stop_server(server)


def test_translate_streams_the_greedy_translation(speaking: Server, speaking_models: Path) -> None:
    text = "the small black dog chases a brown cat"  # every word in the translator's vocabulary
    events = run(call(speaking.target, lambda c: c.translate(text, include_attention=True)))
    *tokens, last = events
    assert last.WhichOneof("event") == "final" and all(e.HasField("token") for e in tokens)
    assert len(tokens) > 1, "a translation with tokens to compare"
    final = last.final
    assert final.text == "".join(e.token.text for e in tokens)
    assert final.summary.output_tokens == len(tokens)
    assert final.summary.model == "translation" and final.summary.version == 1
    assert final.summary.timings.total_seconds >= final.summary.timings.time_to_first_token_seconds
    assert list(final.source_tokens) == text.split()
    for e in tokens:
        assert len(e.token.attention) == len(final.source_tokens)
        assert sum(e.token.attention) == pytest.approx(1.0, abs=1e-4)
    from tokenizers import Tokenizer

    model = rebuild_model(untrained_checkpoint("translation"))  # the bundle's (seeded) weights
    tokenizer = Tokenizer.from_file(str(speaking_models / "translation" / "1" / "tokenizer.json"))
    ids = tokenizer.encode(text).ids
    expected = greedy_decode(
        model, torch.tensor([ids]), torch.tensor([len(ids)]), bos_id=BOS_ID, eos_id=EOS_ID,
        max_len=2 * len(ids) + 10,
    )[0]  # fmt: skip
    assert [e.token.id for e in tokens] == expected


def test_sentiment_streams_one_running_label_per_token(served: Server, tiny_models: Path) -> None:
    text = "the plot was good but the acting was terrible"
    events = run(call(served.target, lambda c: c.sentiment(text)))
    *tokens, last = events
    final = last.final
    assert [e.token.text for e in tokens] == text.split()
    assert [e.token.index for e in tokens] == list(range(len(tokens)))
    assert list(final.labels) == ["negative", "positive"]
    assert final.label == tokens[-1].token.label
    assert list(final.probabilities) == pytest.approx(list(tokens[-1].token.probabilities))
    for e in tokens:
        assert sum(e.token.probabilities) == pytest.approx(1.0, abs=1e-5)
    model, tokenizer = load_torch(tiny_models, "sentiment")
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokenizer.encode(text).ids]), model.init_hidden(1))
    expected = torch.softmax(logits[0], dim=1).flatten().tolist()
    got = [p for e in tokens for p in e.token.probabilities]
    assert got == pytest.approx(expected, abs=1e-4)


def test_complete_streams_the_greedy_completion(served: Server, tiny_models: Path) -> None:
    """The model alone decodes as PyTorch does; with the bundle's popular-query index the
    streamed completion is the best ranked suggestion (tests/services/test_suggestions.py)."""
    prefix = "weather in"
    ranked = run(call(served.target, lambda c: c.complete(prefix, max_tokens=12,
                                                          num_suggestions=3)))  # fmt: skip
    best = ranked[-1].final
    assert best.completion and best.suggestions[0].text.startswith(best.completion)
    events = run(call(served.target, lambda c: c.complete(prefix, max_tokens=12,
                                                          model_only=True)))  # fmt: skip
    *tokens, last = events
    final = last.final
    assert final.completion == "".join(e.token.text for e in tokens)
    assert 0 < len(tokens) == final.summary.output_tokens <= 12, "tokens to compare"
    expected_reason = pb.FINISH_REASON_LENGTH if len(tokens) == 12 else pb.FINISH_REASON_STOP
    assert final.summary.finish_reason == expected_reason
    model, tokenizer = load_torch(tiny_models, "autocomplete")
    ids = [BOS_ID, *tokenizer.encode(prefix).ids]
    state, generated = model.init_hidden(1), []
    with torch.no_grad():
        logits, state = model(torch.tensor([ids]), state)
        for _ in range(12):
            token = int(logits[0, -1].argmax())
            if token == EOS_ID:
                break
            generated.append(token)
            logits, state = model(torch.tensor([[token]]), state)
    assert [e.token.id for e in tokens] == generated


def test_session_answers_every_revision_like_complete(served: Server) -> None:
    texts = ["wea", "weat", "weather i", "how"]

    async def scenario() -> tuple[dict[int, str], list[str]]:
        async with RecurClient(served.target) as client:
            session = client.session(max_tokens=10)
            finals: dict[int, str] = {}
            for text in texts:
                await session.send_text(text)
                async for response in session:
                    if response.WhichOneof("event") == "final":
                        finals[response.revision] = response.final.completion
                        break
            await session.close()
            expected = []
            for text in texts:
                events = await collect(client.complete(text, max_tokens=10))
                expected.append(events[-1].final.completion)
            return finals, expected

    finals, expected = run(scenario())
    assert all(expected), f"every revision has a completion to compare: {expected}"
    assert finals == {i + 1: completion for i, completion in enumerate(expected)}


def test_session_applies_edits() -> None:
    from services.session import Edit

    text = "weather in paris"
    assert Edit(11, 16, "rome").apply(text) == "weather in rome"
    assert Edit(16, 16, " today").apply(text) == "weather in paris today"
    assert Edit(0, 8, "").apply(text) == "in paris"


def test_list_models_and_health(served: Server) -> None:
    async def scenario() -> tuple[Any, list[str]]:
        async with RecurClient(served.target) as client:
            statuses = [await client.health(s) for s in ("", "recur.v1.TranslationService")]
            return await client.list_models(), statuses

    response, statuses = run(scenario())
    assert statuses == ["SERVING", "SERVING"]
    tasks = {(m.name, m.version, m.task, m.cell, m.is_default) for m in response.models}
    assert tasks == {
        ("translation", 1, "translation", "gru", True),
        ("sentiment", 1, "sentiment", "gru", True),
        ("autocomplete", 1, "autocomplete", "gru", True),
    }
    assert all("valid_loss" in m.metrics for m in response.models)


@pytest.mark.parametrize(
    ("call_", "code", "message", "reason"),
    [
        (lambda c: c.translate(""), "INVALID_ARGUMENT", "text must not be empty", "empty text"),
        (lambda c: c.complete("x", max_tokens=100000), "INVALID_ARGUMENT", "max_tokens must be",
         "max_tokens over the limit"),
        (lambda c: c.sentiment("good", model="nope"), "NOT_FOUND", "unknown model 'nope'",
         "unknown model"),
        (lambda c: c.complete("hi", model="sentiment"), "NOT_FOUND", "serves sentiment",
         "model of another task"),
        (lambda c: c.sentiment("x" * 5000), "INVALID_ARGUMENT", "at most 2000 characters",
         "text over the length limit"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_status_naming_the_field(
    served: Server, call_: Any, code: str, message: str, reason: str
) -> None:
    with pytest.raises(RecurError) as info:
        run(call(served.target, call_))
    assert info.value.code == getattr(grpc.StatusCode, code), reason
    assert message in info.value.details, reason


def test_metrics_are_scraped_over_http(served: Server) -> None:
    run(call(served.target, lambda c: c.sentiment("good movie")))
    with urllib.request.urlopen(served.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert (
        'recur_requests_total{code="OK",model="sentiment",rpc="Analyze",task="sentiment",'
        'version="1"}' in text
    )
    assert "recur_time_to_first_token_seconds_bucket" in text
    assert 'le="5e-05"' in text  # histograms start at 50 µs
    assert "recur_inter_token_latency_seconds_count" in text


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line[:1] != "#")}


def test_a_session_records_its_answers_tokens_and_latencies(served: Server) -> None:
    """A session's answers count like Complete's: their tokens, each answer's time to first
    token, and the gaps between the messages of one answer (not the user's pause between
    keystrokes)."""
    from grpc import aio

    from protos.recur.v1 import inference_pb2_grpc as pb_grpc

    keys = ["w", "we", "wea"]
    labels = 'model="autocomplete",rpc="Session",task="autocomplete",version="1"'

    def value(page: dict[str, float], name: str) -> float:
        return page.get(f"{name}{{{labels}}}", 0.0)

    async def go() -> list[int]:
        messages = []  # tokens of each token message
        async with aio.insecure_channel(served.target) as channel:
            session = pb_grpc.AutocompleteServiceStub(channel).Session(timeout=60)
            for text in keys:
                await session.write(pb.SessionRequest(text=text, max_tokens=6, model_only=True))
                answer = []
                while (response := await session.read()).WhichOneof("event") != "final":
                    answer.append(1 if response.HasField("token") else len(response.tokens.tokens))
                messages.append(answer)
                await asyncio.sleep(0.05)  # the user's pause: not an inter-token gap
            await session.done_writing()
            await session.read()
        return messages

    before = scrape(served.metrics_url)
    messages = run(go())
    after = scrape(served.metrics_url)
    tokens = sum(map(sum, messages))
    assert tokens > 0
    assert (
        value(after, "recur_generated_tokens_total") - value(before, "recur_generated_tokens_total")
        == tokens
    )
    ttft = "recur_time_to_first_token_seconds_count"
    assert value(after, ttft) - value(before, ttft) == len(keys)
    itl = "recur_inter_token_latency_seconds_count"
    gaps = sum(len(answer) - 1 for answer in messages if answer)
    assert value(after, itl) - value(before, itl) == gaps  # none across the user's pauses


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_server_refuses_a_busy_port_with_a_clear_error(
    served: Server, tiny_models: Path, flag: str
) -> None:
    import subprocess
    import sys
    from urllib.parse import urlsplit

    busy = {
        "--port": served.target.rsplit(":", 1)[1],
        "--metrics-port": str(urlsplit(served.metrics_url).port),
    }
    ports = {"--port": "0", "--metrics-port": "-1"} | {flag: busy[flag]}
    result = subprocess.run(
        [sys.executable, "-m", "services.server", "--models", str(tiny_models),
         "--host", "127.0.0.1", "--metrics-host", "127.0.0.1",
         "--port", ports["--port"], "--metrics-port", ports["--metrics-port"]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"recur-serve: error: {flag}: cannot listen on 127.0.0.1:{busy[flag]}" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_drains_and_exits_cleanly(tiny_models: Path) -> None:
    server = start_server(tiny_models)
    run(call(server.target, lambda c: c.complete("weather", max_tokens=5)))
    output = stop_server(server)
    assert server.process.returncode == 0
    assert "draining" in output and "recur-serve: stopped" in output


def test_request_id_is_echoed_or_generated(served: Server) -> None:
    from grpc import aio

    from protos.recur.v1 import inference_pb2_grpc as pb_grpc

    async def trailing(metadata: tuple[tuple[str, str], ...]) -> dict[str, str]:
        async with aio.insecure_channel(served.target) as channel:
            call = pb_grpc.SentimentServiceStub(channel).Analyze(
                pb.SentimentRequest(text="good"), metadata=metadata
            )
            async for _ in call:
                pass
            return {k: str(v) for k, v in (await call.trailing_metadata() or ())}

    assert run(trailing((("x-request-id", "req-42"),)))["x-request-id"] == "req-42"
    generated = [run(trailing(()))["x-request-id"] for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", g) for g in generated), generated
    assert generated[0] != generated[1]  # one per call
