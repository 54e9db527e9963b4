"""The served running sentiment pools per-token logits as the classifier was trained to."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from services.engine import Engine
from services.events import Finished, RunningLabel
from services.model import ModelRegistry
from trainer.config import TrainConfig
from trainer.export import export_checkpoint
from trainer.loop import make_checkpoint
from trainer.tasks import get_task


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_running_label_follows_the_pooling(pooling: str, tmp_path: Path) -> None:
    task = get_task("sentiment")
    cfg = TrainConfig(task="sentiment", embed_dim=16, hidden_size=24, pooling=pooling,
                      max_train_examples=100)  # fmt: skip
    data = task.prepare(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size()).eval()
    checkpoint = make_checkpoint(task, data, cfg, model, metrics={"valid_loss": 1.0})
    export_checkpoint(checkpoint, out=tmp_path, name="s")
    engine = Engine(ModelRegistry.load(tmp_path))
    served = engine.registry.resolve("", "sentiment")
    assert served.bundle.manifest.pooling == pooling
    text = "the acting was good but the plot was terrible"

    async def collect() -> list[object]:
        return [e async for batch in engine.analyze(served, text, arrived=0.0) for e in batch]

    events = asyncio.run(collect())
    running = [e.probabilities for e in events if isinstance(e, RunningLabel)]
    ids = torch.tensor([served.tokenizer.encode(text).ids])
    with torch.no_grad():
        logits, _ = model(ids, model.init_hidden(1))
        expected = [
            torch.softmax(model.pool(logits[:, : t + 1], torch.tensor([t + 1]))[0], 0).tolist()
            for t in range(ids.shape[1])
        ]
    assert len(running) == len(expected)
    for got, want in zip(running, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.probabilities == pytest.approx(expected[-1], abs=1e-5)
