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
