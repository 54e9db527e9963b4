"""The engine steps any cell's graphs: state names come from the manifest, not from the code."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from services.engine import Engine
from services.events import Finished, RunningLabel, TokenEvent
from services.model import ModelRegistry
from services.requests import CompleteParams, TranslateParams
from tests.conftest import untrained_checkpoint
from trainer.data.tokenizer import BOS_ID, EOS_ID
from trainer.export import export_checkpoint, rebuild_model
from trainer.models.seq2seq import greedy_decode


async def collect(stream: Any) -> list[Any]:
    return [event async for batch in stream for event in batch]


@pytest.fixture(scope="module", params=["lstm", "jordan", "elman"])
def cell_repo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Untrained bundles of every task for one cell, with the PyTorch models they came from."""
    repo = tmp_path_factory.mktemp(request.param)
    models = {}
    for task in ("translation", "sentiment", "autocomplete"):
        checkpoint = untrained_checkpoint(task, request.param)
        export_checkpoint(checkpoint, out=repo, name=task)
        models[task] = rebuild_model(checkpoint)
    registry = ModelRegistry.load(repo)
    yield request.param, Engine(registry), models
    registry.models.clear()


def test_translation_matches_pytorch_greedy(cell_repo: Any) -> None:
    cell, engine, models = cell_repo
    model = engine.registry.resolve("", "translation")
    text = "the small dog sees a red car"
    events = asyncio.run(
        collect(engine.translate(model, text, TranslateParams(max_tokens=8),
                                 arrived=time.perf_counter()))
    )  # fmt: skip
    ids = model.tokenizer.encode(text).ids
    expected = greedy_decode(models["translation"], torch.tensor([ids]), torch.tensor([len(ids)]),
                             bos_id=BOS_ID, eos_id=EOS_ID, max_len=8)[0]  # fmt: skip
    assert [e.id for e in events if isinstance(e, TokenEvent)] == expected, cell
    assert isinstance(events[-1], Finished)


def test_sentiment_and_completion_match_pytorch(cell_repo: Any) -> None:
    cell, engine, models = cell_repo
    sentiment = engine.registry.resolve("", "sentiment")
    events = asyncio.run(collect(engine.analyze(sentiment, "not bad at all", arrived=0.0)))
    running = [e for e in events if isinstance(e, RunningLabel)]
    ids = sentiment.tokenizer.encode("not bad at all").ids
    with torch.no_grad():
        logits, _ = models["sentiment"](torch.tensor([ids]), models["sentiment"].init_hidden(1))
    expected = torch.softmax(logits[0], 1).flatten().tolist()
    assert [p for e in running for p in e.probabilities] == pytest.approx(expected, abs=1e-4)
    lm = engine.registry.resolve("", "autocomplete")
    params = CompleteParams(max_tokens=6, model_only=True)  # decoding, not the index's ranking
    stream = engine.complete(lm, "how to", params, arrived=0.0)
    events = asyncio.run(collect(stream))
    prefix = [BOS_ID, *lm.tokenizer.encode("how to").ids]
    model, generated = models["autocomplete"], []
    with torch.no_grad():
        out, state = model(torch.tensor([prefix]), model.init_hidden(1))
        for _ in range(6):
            token = int(out[0, -1].argmax())
            if token == EOS_ID:
                break
            generated.append(token)
            out, state = model(torch.tensor([[token]]), state)
    assert [e.id for e in events if isinstance(e, TokenEvent)] == generated, cell


def test_manifest_lists_the_cells_state(cell_repo: Any, tmp_path: Path) -> None:
    cell, engine, _ = cell_repo
    model = engine.registry.resolve("", "autocomplete")
    expected = {"lstm": {"h": "h_out", "c": "c_out"}, "jordan": {"y": "y_out"}}.get(
        cell, {"h": "h_out"}
    )
    assert {s.input: s.output for s in model.bundle.manifest.state} == expected
    assert set(model.zero_state(3)) == set(expected)
    assert all(a.shape == (2, 3, 24) for a in model.zero_state(3).values())
