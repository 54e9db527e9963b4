"""Relaunching a run with the same name resumes it: same result as a run never interrupted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import untrained_checkpoint
from trainer import cli
from trainer.checkpoint import Checkpoint, Position, load
from trainer.cli import run
from trainer.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(tmp_path: Path, name: str, epochs: int) -> TrainConfig:
    return TrainConfig(
        task="sentiment", workers=0, epochs=epochs, max_train_examples=400, hidden_size=24,
        embed_dim=16, schedule="cosine", log_every=1000, diagnose_every=0,
        out=str(tmp_path / "models"), run_dir=str(tmp_path / "runs"), run_name=name,
    )  # fmt: skip


def history(tmp_path: Path, name: str) -> list[dict[str, float]]:
    metrics = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
    return list(metrics["history"])


def test_resumed_run_equals_an_uninterrupted_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(config(tmp_path, "whole", epochs=3))
    save = cli.save_each_epoch

    def crash_after_saving(path: Path, metrics: dict[str, float], checkpoint: object) -> None:
        save(path, metrics, checkpoint)
        raise SystemExit("simulated crash after the first epoch's checkpoint")

    monkeypatch.setattr(cli, "save_each_epoch", crash_after_saving)
    with pytest.raises(SystemExit, match="simulated crash"):
        run(config(tmp_path, "parts", epochs=3))
    monkeypatch.undo()
    run(config(tmp_path, "parts", epochs=3))  # relaunched with the same name
    assert "resuming at epoch 2 (step " in capsys.readouterr().out
    whole, parts = history(tmp_path, "whole"), history(tmp_path, "parts")
    assert [m["epoch"] for m in parts] == [1.0, 2.0, 3.0]
    for a, b in zip(whole, parts, strict=True):  # optimizer, schedule and data order all resumed
        assert a["steps"] == b["steps"] and a["lr"] == pytest.approx(b["lr"])
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-5)


def test_relaunching_a_finished_run_exports_it_again(tmp_path: Path) -> None:
    run(config(tmp_path, "done", epochs=1))
    bundle = run(config(tmp_path, "done", epochs=1))
    assert bundle == tmp_path / "models" / "sentiment" / "2"


def crash_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the in-process report raise right after it saved the checkpoint of `step`."""
    save = cli.save_each_epoch

    def crash(path: Path, metrics: dict[str, float], checkpoint: object) -> None:
        save(path, metrics, checkpoint)
        if metrics["steps"] == step:
            raise SystemExit(f"simulated crash after step {step}")

    monkeypatch.setattr(cli, "save_each_epoch", crash)


def model_state(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    return load(tmp_path / "runs" / name / "checkpoint.pt").weights


def queries_file(tmp_path: Path) -> str:
    words = ["weather", "paris", "cheap", "flights", "news", "today", "recipes", "pasta"]
    lines = [f"{words[i % 8]} {words[(3 * i + 1) % 8]} {i % 13}" for i in range(160)]
    (tmp_path / "q.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "q.txt")


def test_a_run_resumed_mid_epoch_equals_an_uninterrupted_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Truncated BPTT through `recur-train`'s own checkpoint file: killed after step 24 (epoch
    2, chunk 4 of 20), relaunched; the carried state and the data position are restored."""
    common = dict(task="autocomplete", data="files", train=queries_file(tmp_path), workers=0,
                  epochs=2, hidden_size=16, embed_dim=8, bptt=16, batch_size=8,
                  checkpoint_every_steps=4, log_every=1000, diagnose_every=0,
                  eval_completions=0, out=str(tmp_path / "models"),
                  run_dir=str(tmp_path / "runs"))  # fmt: skip
    run(TrainConfig(**common, run_name="whole"))  # type: ignore[arg-type]
    crash_at_step(monkeypatch, 24)
    parts = TrainConfig(**common, run_name="parts")  # type: ignore[arg-type]
    with pytest.raises(SystemExit, match="simulated crash"):
        run(parts)
    monkeypatch.undo()
    run(parts)
    assert "resuming at epoch 2, batch 4 (step 24)" in capsys.readouterr().out
    assert history(tmp_path, "parts") == history(tmp_path, "whole")  # every metric, bit for bit
    a, b = model_state(tmp_path, "whole"), model_state(tmp_path, "parts")
    assert all(torch.equal(a[k], b[k]) for k in a)


class Crash(Exception):
    pass


@pytest.mark.parametrize(("batch_type", "batch_size"), [("examples", 16), ("tokens", 60)])
def test_dropout_and_probes_resume_mid_epoch_exactly(batch_type: str, batch_size: int) -> None:
    """Mini-batches with dropout and gradient-flow probes (both draw random numbers): stopped
    after step 10 of epoch 1 (of 20 random batches, or of the token-budget batches), resumed
    from that checkpoint alone."""
    from trainer.loop import train_loop
    from trainer.tasks import get_task

    cfg = TrainConfig(task="sentiment", epochs=2, max_train_examples=320, batch_size=batch_size,
                      batch_type=batch_type, hidden_size=16, embed_dim=8, num_layers=2,
                      dropout=0.3, diagnose_every=3, schedule="cosine", checkpoint_every_steps=5,
                      log_every=1000)  # fmt: skip
    task = get_task("sentiment")
    data = task.prepare(cfg)
    whole = train_loop(task, data, cfg, report=lambda m, c: None)
    assert whole.checkpoint is not None and whole.checkpoint.position.steps > 2 * 12  # 2 epochs
    saved: list[Checkpoint] = []

    def crash_after_step_10(metrics: dict[str, float], checkpoint: Checkpoint | None) -> None:
        assert checkpoint is not None
        saved.append(checkpoint)
        if metrics["steps"] == 10:
            raise Crash

    with pytest.raises(Crash):
        train_loop(task, data, cfg, report=crash_after_step_10)
    resume = saved[-1]
    assert (resume.position.epoch, resume.position.batch) == (0, 10)
    parts = train_loop(task, data, cfg, report=lambda m, c: None, resume=resume)
    assert parts.checkpoint is not None and whole.checkpoint is not None
    assert parts.checkpoint.history == whole.checkpoint.history
    assert parts.checkpoint.gradient_flow == whole.checkpoint.gradient_flow
    a, b = whole.model.state_dict(), parts.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_step_checkpoints_are_reported_inside_epochs_only(tmp_path: Path) -> None:
    """20 steps an epoch, a checkpoint every 6: steps 6, 12, 18 | 24, 30, 36; the epochs' own
    checkpoints at 20 and 40 are not repeated as step checkpoints."""
    from trainer.loop import train_loop
    from trainer.tasks import get_task

    cfg = TrainConfig(task="sentiment", epochs=2, max_train_examples=320, batch_size=16,
                      hidden_size=8, embed_dim=8, checkpoint_every_steps=6, log_every=1000,
                      diagnose_every=0)  # fmt: skip
    task = get_task("sentiment")
    reports: list[tuple[dict[str, float], Checkpoint | None]] = []
    train_loop(task, task.prepare(cfg), cfg, report=lambda m, c: reports.append((m, c)))
    assert [m["steps"] for m, _ in reports] == [6, 12, 18, 20, 24, 30, 36, 40]
    positions = [(c.position.epoch, c.position.batch) for _, c in reports if c is not None]
    assert positions == [(0, 6), (0, 12), (0, 18), (1, 0), (1, 4), (1, 10), (1, 16), (2, 0)]
    assert "valid_accuracy" not in reports[0][0] and "valid_accuracy" in reports[3][0]


def test_epoch_sampler_order_shards_and_start() -> None:
    from torch.utils.data import RandomSampler

    from trainer.resume import EpochSampler

    data = list(range(10))
    one = EpochSampler(data, num_replicas=1, rank=0, seed=3)
    one.set_position(2, 0)
    shuffled = list(RandomSampler(data, generator=torch.Generator().manual_seed(3 + 2)))
    assert list(one) == shuffled  # the in-process order a seeded shuffling DataLoader had
    one.set_position(2, 4)
    assert list(one) == shuffled[4:] and len(one) == 6
    ranks = [EpochSampler(data, num_replicas=3, rank=r, seed=3) for r in range(3)]
    for r, sampler in enumerate(ranks):
        sampler.set_position(2, 1 if r == 0 else 0)
    shards = [list(s) for s in ranks]
    assert [len(s) for s in shards] == [3, 4, 4]  # 10 padded to 12, rank 0 skipped one
    assert set(shards[0]) | set(shards[1]) | set(shards[2]) == set(data)


def test_atomic_save_keeps_the_previous_file_when_a_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import checkpoint

    path = tmp_path / "last.pt"
    first = untrained_checkpoint("sentiment")
    checkpoint.save(first, path)

    def half_written(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(dataclasses.replace(first, position=Position(2, 0, 2)), path)
    monkeypatch.undo()
    assert checkpoint.load(path).position == first.position


def test_resuming_mid_epoch_with_another_worker_count_is_refused() -> None:
    from trainer.checkpoint import TrainingState, check_world_size
    from trainer.resume import rank_state

    ranks = [rank_state(None), rank_state(None)]
    state = TrainingState({}, {}, {}, (None, 0), (0.0, 0), [], ranks)
    saved = dataclasses.replace(untrained_checkpoint("sentiment"), training=state)
    check_world_size(saved, 1)  # an epoch boundary: any count
    saved.position = Position(epoch=0, batch=5, steps=5)
    with pytest.raises(ValueError, match="resume it with --workers 2 \\(this run has 1\\)"):
        check_world_size(saved, 1)
