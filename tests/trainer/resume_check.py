"""Resume a run from its first epoch's checkpoint the way `recur-train` resumes one in-process,
and hold it to the run that was never interrupted.

Shared by the CUDA test (`tests/trainer/test_gpu.py`, fp16 and bf16) and its CPU twin
(`tests/trainer/test_resume_precision.py`), so that the assertions a GPU machine runs are the
ones every CPU run has already proven: a check that only ever runs on a borrowed GPU would
otherwise first be debugged there.

The checkpoint goes through the CLI's own path: `cli.save_each_epoch` writes it to the run
directory's `last.pt` when the uninterrupted run reports its first epoch (a run stopped right
there would have left that very file), `checkpoint.resume` reads it back, and `train_loop(...,
resume=...)` continues, as `trainer.cli.run` does for `--workers 0`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer import checkpoint, cli, loop, precision
from trainer.checkpoint import Checkpoint
from trainer.config import TrainConfig
from trainer.loop import LoopResult
from trainer.tasks import get_task

Reports = list[tuple[dict[str, float], Checkpoint]]


class WatchedScaler:
    """The loop's loss scaler, unchanged, noting its state when the first step scales a loss:
    the moment a resumed run must already hold the checkpoint's loss scale."""

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler
        self.at_first_step: dict[str, Any] | None = None

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        if self.at_first_step is None:
            self.at_first_step = self.scaler.state_dict()
        return self.scaler.scale(loss)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scaler, name)


@dataclass
class Resumed:
    """An uninterrupted run and the run resumed from its first epoch's checkpoint."""

    saved: Checkpoint  # the first epoch's, as `checkpoint.resume` read it from last.pt
    scaler_at_first_step: dict[str, Any]  # the resumed run's loss scaler before it stepped
    fresh_scaler: dict[str, Any]  # what a run that did not restore it would have had
    whole_run: LoopResult  # the uninterrupted run
    whole: Reports  # its every report
    parts_run: LoopResult  # the resumed run
    parts: Reports  # its every report


def train_and_resume(
    cfg: TrainConfig, device: torch.device, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Resumed:
    """Train `cfg` (2 epochs) uninterrupted, keeping its first epoch's checkpoint as the CLI
    does; then train again from that checkpoint alone."""
    assert cfg.epochs == 2, "the comparison is of epoch 2, resumed or not"
    task = get_task(cfg.task)
    data = task.prepare(cfg)
    last = run_dir / checkpoint.LAST
    whole: Reports = []
    record = recorder(whole)

    def keep_first_epoch(metrics: dict[str, float], saved: Checkpoint | None) -> None:
        record(metrics, saved)
        if saved is not None and (saved.position.epoch, saved.position.batch) == (1, 0):
            cli.save_each_epoch(last, metrics, saved)

    whole_run = loop.train_loop(task, data, cfg, device=device, report=keep_first_epoch)
    resume = checkpoint.resume(last)  # what `recur-train` calls on a relaunch
    assert resume is not None, f"the first epoch left no {last}"
    scalers: list[WatchedScaler] = []

    def watched(precision_name: str, on: torch.device) -> WatchedScaler:
        scalers.append(WatchedScaler(precision.grad_scaler(precision_name, on)))
        return scalers[-1]

    parts: Reports = []
    with monkeypatch.context() as patch:
        patch.setattr(loop, "grad_scaler", watched)
        parts_run = loop.train_loop(task, data, cfg, device=device, resume=resume,
                                    report=recorder(parts))  # fmt: skip
    (scaler,) = scalers
    assert scaler.at_first_step is not None, "the resumed run took no step"
    return Resumed(
        saved=resume, scaler_at_first_step=scaler.at_first_step,
        fresh_scaler=precision.grad_scaler(cfg.precision, device).state_dict(),
        whole_run=whole_run, whole=whole, parts_run=parts_run, parts=parts,
    )  # fmt: skip


def recorder(reports: Reports) -> loop.Report:
    """A `report` that keeps every report with its checkpoint (one rank: each has one)."""

    def report(metrics: dict[str, float], saved: Checkpoint | None) -> None:
        assert saved is not None, "rank 0 reports its checkpoints"
        reports.append((metrics, saved))

    return report


def assert_resumed_like_uninterrupted(run: Resumed, *, tolerance: float = 0.0) -> None:
    """The resumed run restored the loss scale, went on with epoch 2 and ended where the
    uninterrupted run ended: bit for bit at `tolerance` 0, else with its counters and learning
    rate exactly and its losses and weights within `tolerance` (relative)."""
    assert_loss_scale_restored(run)
    assert_continued_at_epoch_2(run)
    if tolerance == 0:
        assert_same_end(run)
    else:
        assert_close_end(run, tolerance)


def assert_loss_scale_restored(run: Resumed) -> None:
    """fp16 checkpoints its loss scale and the resumed scaler holds it before its first step (a
    fresh scaler differs: it has not counted the first epoch's steps, nor backed off)."""
    assert run.saved.training is not None
    saved, at_start = run.saved.training.scaler, run.scaler_at_first_step
    assert at_start == saved, f"resumed with the loss scale {at_start}, saved {saved}"
    if run.saved.config.precision == "fp16":
        assert saved["scale"] > 0, saved
        assert saved != run.fresh_scaler, "a loss scale never restored would pass too"
    else:
        assert saved == {}, saved  # no loss scaling outside fp16


def assert_continued_at_epoch_2(run: Resumed) -> None:
    """From the first epoch's checkpoint, the resumed run trained and validated epoch 2 alone,
    on top of epoch 1's history as the checkpoint carried it."""
    saved, parts, whole = run.saved, run.parts[-1][1], run.whole[-1][1]
    assert (saved.position.epoch, saved.position.batch) == (1, 0), saved.position
    epochs = [m["epoch"] for m, _ in run.parts if "batch" not in m]
    assert epochs == [2.0], f"the resumed run validated epochs {epochs}"
    assert [m["epoch"] for m in parts.history] == [1.0, 2.0], parts.history
    assert parts.history[0] == saved.history[0], (parts.history[0], saved.history[0])
    assert parts.position == whole.position, (parts.position, whole.position)  # epochs, steps
    assert parts.position.steps == 2 * saved.position.steps, (parts.position, saved.position)


def assert_same_end(run: Resumed) -> None:
    """Every metric, the final loss scale and every weight as the uninterrupted run's."""
    whole, parts = run.whole[-1][1], run.parts[-1][1]
    assert parts.history == whole.history, (parts.history, whole.history)
    assert parts.training is not None and whole.training is not None
    assert parts.training.scaler == whole.training.scaler, "the loss scale at the end"
    a, b = weights(run.whole_run), weights(run.parts_run)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"weights that differ from the uninterrupted run's: {differ}"


def assert_close_end(run: Resumed, tolerance: float) -> None:
    """Steps and learning rates as the uninterrupted run's, losses and weights (relative L2
    distance of each tensor) within `tolerance`; BLEU and the like are left out: one token
    decoded otherwise moves them by a step."""
    whole, parts = run.whole[-1][1], run.parts[-1][1]
    for a, b in zip(whole.history, parts.history, strict=True):
        assert (a["steps"], a["lr"]) == (b["steps"], b["lr"]), (a, b)
        for key in ("train_loss", "valid_loss"):
            assert b[key] == pytest.approx(a[key], rel=tolerance), (key, a, b)
    expected, got = weights(run.whole_run), weights(run.parts_run)
    for name, tensor in got.items():
        reference = expected[name].float()
        distance = float((tensor.float() - reference).norm() / reference.norm().clamp_min(1e-12))
        assert distance <= tolerance, f"{name}: {distance:.2e} from the uninterrupted run's"


def weights(result: LoopResult) -> dict[str, torch.Tensor]:
    """The final model's state, on the CPU."""
    return {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
