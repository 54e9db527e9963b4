"""The CUDA path of the training loop, in-process (`--workers 0 --use-gpu`). Needs a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.config import TrainConfig

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("task", ["translation", "sentiment", "autocomplete"])
def test_in_process_cuda_training_exports_a_bundle(task: str, tmp_path: Path) -> None:
    from trainer.cli import run

    cfg = TrainConfig(
        task=task, workers=0, use_gpu=True, epochs=1, max_train_examples=2000,
        out=str(tmp_path / "m"), run_dir=str(tmp_path / "runs"), log_every=1000,
    )  # fmt: skip
    bundle = run(cfg)
    assert bundle is not None
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert all(g["parity"]["max_abs_diff"] <= 1e-4 for g in manifest["graphs"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_cuda_training_resumes_with_its_loss_scale(
    precision: str, tmp_path: Path
) -> None:
    from trainer.loop import train_loop
    from trainer.tasks import get_task

    cfg = TrainConfig(task="translation", workers=0, use_gpu=True, precision=precision,
                      epochs=2, max_train_examples=2000, log_every=1000)  # fmt: skip
    task = get_task("translation")
    losses: list[float] = []  # every epoch's validation loss, as reported

    def report(metrics: dict[str, float], checkpoint: object) -> None:
        if "valid_loss" in metrics:
            losses.append(metrics["valid_loss"])

    result = train_loop(task, task.prepare(cfg), cfg, report=report,
                        device=torch.device("cuda"))  # fmt: skip
    assert result.checkpoint is not None  # the best epoch's (by validation BLEU), not the last
    assert len(losses) == 2 and losses[-1] < losses[0], losses
    assert result.checkpoint.training is not None
    scaler = result.checkpoint.training.scaler
    assert (precision == "fp16") == bool(scaler)  # fp16 checkpoints its loss scale
    if precision == "fp16":
        assert scaler["scale"] > 0
