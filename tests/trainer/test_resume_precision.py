"""The CPU twin of the CUDA resume test (`test_gpu.py`): the same resume-and-compare helper, at
tiny sizes, so its assertions are proven wherever the tests run.

fp16 trains here too: the CLI refuses `--precision fp16` without `--use-gpu` (on a CPU it only
costs time), but the loop's `torch.amp.GradScaler` scales, backs off and checkpoints on the CPU
as on CUDA, so the loss-scale restore is exercised, not only its absence.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.resume_check import assert_resumed_like_uninterrupted, train_and_resume
from trainer.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_run_resumed_at_epoch_2_keeps_its_loss_scale_and_equals_an_uninterrupted_one(
    precision: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrainConfig(task="translation", workers=0, precision=precision, epochs=2,
                      max_train_examples=320, max_valid_examples=64, batch_size=32,
                      hidden_size=24, embed_dim=16, diagnose_every=4,
                      log_every=1000)  # fmt: skip
    run = train_and_resume(cfg, torch.device("cpu"), tmp_path, monkeypatch)
    assert_resumed_like_uninterrupted(run)  # bit for bit


def test_the_comparison_fails_a_resume_that_forgot_the_loss_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed scaler left at its initial state must not pass for a restored one."""
    cfg = TrainConfig(task="sentiment", workers=0, precision="fp16", epochs=2,
                      max_train_examples=128, batch_size=32, hidden_size=16, embed_dim=8,
                      diagnose_every=0, log_every=1000)  # fmt: skip
    run = train_and_resume(cfg, torch.device("cpu"), tmp_path, monkeypatch)
    run.scaler_at_first_step = run.fresh_scaler
    with pytest.raises(AssertionError, match="resumed with the loss scale"):
        assert_resumed_like_uninterrupted(run)
