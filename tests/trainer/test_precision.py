"""Mixed precision (`--precision`): autocast in the forward pass, fp16 refused without CUDA."""

from __future__ import annotations

import pytest
import torch

import settings
from trainer import precision
from trainer.config import TrainConfig
from trainer.loop import train_loop
from trainer.tasks import get_task


def test_the_flag_offers_the_precisions_of_the_module() -> None:
    (spec,) = [s for s in settings.specs(TrainConfig) if s.name == "precision"]
    assert spec.choices() == precision.PRECISIONS


@pytest.mark.parametrize("task_name", ["translation", "sentiment", "autocomplete"])
def test_bf16_autocast_runs_the_forward_pass_in_bfloat16_on_the_cpu(task_name: str) -> None:
    cfg = TrainConfig(task=task_name, max_train_examples=64, batch_size=16, hidden_size=32,
                      embed_dim=16, epochs=1, diagnose_every=0, log_every=1000)  # fmt: skip
    task = get_task(task_name)
    data = task.prepare(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size())
    batch = task.collate(list(data.train[:16]))
    full, _ = task.loss(model, batch)
    with precision.autocast("bf16", torch.device("cpu")):
        mixed, _ = task.loss(model, batch)
    # the same loss to bfloat16's ~3 significant digits, but not bit for bit: autocast ran
    assert mixed.item() == pytest.approx(full.item(), rel=3e-2) and mixed.item() != full.item()
    mixed.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_a_bf16_run_trains_and_keeps_float32_weights() -> None:
    cfg = TrainConfig(task="sentiment", precision="bf16", max_train_examples=160, batch_size=16,
                      hidden_size=32, embed_dim=16, epochs=2, diagnose_every=0,
                      log_every=1000)  # fmt: skip
    task = get_task("sentiment")
    result = train_loop(task, task.prepare(cfg), cfg, report=lambda m, c: None)
    assert result.checkpoint is not None
    history = result.checkpoint.history
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert all(v.dtype == torch.float32 for v in result.checkpoint.weights.values()
               if v.is_floating_point())  # fmt: skip
    assert result.checkpoint.training is not None
    assert result.checkpoint.training.scaler == {}  # no loss scaling outside fp16


def test_fp16_needs_a_gpu() -> None:
    with pytest.raises(ValueError, match="--precision fp16 needs --use-gpu"):
        TrainConfig(precision="fp16").validate()
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, fp16"):
        TrainConfig(precision="int8").validate()
