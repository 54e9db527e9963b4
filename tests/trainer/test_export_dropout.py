"""A model trained with dropout exports: the graph wrappers stay in eval mode through export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.config import TrainConfig
from trainer.export import export_checkpoint
from trainer.loop import make_checkpoint
from trainer.tasks import get_task


@pytest.mark.parametrize("task_name", ["sentiment", "translation", "autocomplete"])
def test_dropout_models_pass_parity(task_name: str, tmp_path: Path) -> None:
    task = get_task(task_name)
    cfg = TrainConfig(task=task_name, embed_dim=16, hidden_size=24, num_layers=2, dropout=0.5,
                      max_train_examples=100)  # fmt: skip
    data = task.prepare(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size())  # left in training mode
    checkpoint = make_checkpoint(task, data, cfg, model, metrics={"valid_loss": 1.0})
    bundle = export_checkpoint(checkpoint, out=tmp_path, name=task_name)
    assert (bundle / "manifest.json").is_file()
