"""trainer/checkpoint.py: the typed checkpoint survives a save and load whole, files of another
Recur are refused with a way out, and both resume paths (in-process, Ray) read it the same way."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch

from tests.conftest import untrained_checkpoint
from trainer import checkpoint as checkpoints
from trainer.checkpoint import Checkpoint, CheckpointError, load, save
from trainer.config import TrainConfig
from trainer.loop import train_loop
from trainer.tasks import get_task


@functools.cache  # read-only below
def mid_epoch_checkpoint(*, weight_norm: bool = False) -> Checkpoint:
    """A real checkpoint inside an epoch: optimizer, schedule, early stopping, history, gradient
    flows (not with weight normalization, which they cannot copy yet) and the carried TBPTT
    state all filled in."""
    cfg = TrainConfig(task="autocomplete", epochs=2, max_train_examples=40,
                      max_valid_examples=20, bptt=8,
                      batch_size=4, hidden_size=8, embed_dim=8, schedule="cosine",
                      checkpoint_every_steps=3, diagnose_every=0 if weight_norm else 2,
                      eval_completions=0, weight_norm=weight_norm, log_every=1000)  # fmt: skip
    task = get_task("autocomplete")
    reported: list[Checkpoint] = []
    train_loop(task, task.prepare(cfg), cfg, report=lambda m, c: reported.append(c) if c else None)
    inside = [c for c in reported if c.position.epoch == 1 and c.position.batch]
    return inside[0]


def assert_same(a: object, b: object, where: str = "checkpoint") -> None:
    """Equal, tensors included (bit for bit), through dataclasses, dicts, lists and tuples."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where  # type: ignore[arg-type]
        for i, (x, y) in enumerate(zip(a, b, strict=True)):  # type: ignore[call-overload]
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_a_checkpoint_survives_save_and_load_whole(tmp_path: Path) -> None:
    saved = mid_epoch_checkpoint()
    assert saved.training is not None and saved.training.ranks[0].tbptt is not None
    assert saved.history and saved.gradient_flow and saved.training.optimizer["state"]
    save(saved, tmp_path / "last.pt")
    assert_same(load(tmp_path / "last.pt"), saved)


def test_the_weights_are_stored_once(tmp_path: Path) -> None:
    """Every tensor of the weights appears in the file once: no second copy for the resume."""
    saved = mid_epoch_checkpoint()
    on_disk = saved.to_dict()
    found: list[torch.Tensor] = []

    def walk(value: object) -> None:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(on_disk)
    weight = next(iter(saved.weights.values()))
    assert sum(t is weight for t in found) == 1
    assert sorted(k for k in on_disk if k != "format") == sorted(
        f.name for f in dataclasses.fields(Checkpoint)
    )


def older_recur_checkpoint() -> dict[str, object]:
    """The untyped dict Recur wrote before this module (its top-level keys and a resume)."""
    current = untrained_checkpoint("sentiment")
    return {"task": "sentiment", "config": dataclasses.asdict(current.config),
            "model_config": dataclasses.asdict(current.model_config),
            "model_state": current.weights, "tokenizer": current.tokenizer, "labels": ["0", "1"],
            "metrics": {"valid_loss": 1.0}, "steps": 0, "epochs": 0,
            "resume": {"model_state": current.weights, "epoch": 0, "batch": 0}}  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message", "reason"),
    [
        (older_recur_checkpoint, "written by an older Recur .*recur-export --checkpoint", "old"),
        (lambda: {**untrained_checkpoint("sentiment").to_dict(), "format": 99},
         "written by a newer Recur \\(checkpoint format 99\\)", "newer"),
        (lambda: {"step": 1}, "is not a Recur checkpoint", "a foreign dict"),
        (lambda: {k: v for k, v in untrained_checkpoint("sentiment").to_dict().items()
                  if k != "weights"}, "is a damaged checkpoint \\(KeyError", "no weights"),
    ],
)  # fmt: skip
def test_files_of_another_recur_are_refused_with_a_way_out(
    tmp_path: Path, content: object, message: str, reason: str
) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save(content(), path)  # type: ignore[operator]
    with pytest.raises(CheckpointError, match=f"^{path} .*{message}"):
        load(path)


def test_recur_export_refuses_an_older_checkpoint_and_says_how_to_reexport(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.export_cli import main

    torch.save(older_recur_checkpoint(), tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "older Recur" in err and "recur-export --checkpoint" in err and "git checkout" in err
    assert not (tmp_path / "models").exists()


def test_a_run_relaunched_over_an_older_checkpoint_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.cli import main

    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    torch.save(older_recur_checkpoint(), run / "last.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["--task", "sentiment", "--workers", "0", "--run-name", "old", "--run-dir",
              str(tmp_path / "runs"), "--max-train-examples", "100"])  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"recur-train: error: {run / 'last.pt'} was written by an older Recur" in err
    assert "train again under a new --run-name" in err


def test_in_process_and_ray_resume_read_the_same_checkpoint_the_same_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`recur-train --workers 0` resumes from its run's last.pt and a Ray worker from the file of
    Ray's latest checkpoint; both go through `trainer.checkpoint.resume` (its line is printed
    by no one else) and get the same checkpoint."""
    import ray.train

    from trainer.ray_job import resume_from

    saved = mid_epoch_checkpoint()
    at = f"epoch {saved.position.epoch} done, batch {saved.position.batch} of the next"
    run_dir, ray_dir = tmp_path / "run", tmp_path / "checkpoint_2026-01-01"
    run_dir.mkdir()
    ray_dir.mkdir()
    save(saved, run_dir / checkpoints.LAST)
    save(saved, ray_dir / checkpoints.FILE)

    in_process = checkpoints.resume(run_dir / checkpoints.LAST)
    assert f"restored {run_dir / checkpoints.LAST}: {at}" in capsys.readouterr().out
    by_ray = resume_from(ray.train.Checkpoint.from_directory(str(ray_dir)), rank=0)
    assert f"restored {ray_dir}: {at}" in capsys.readouterr().out
    assert in_process is not None and by_ray is not None
    assert_same(in_process, saved)
    assert_same(by_ray, saved)
    assert checkpoints.resume(tmp_path / "none" / checkpoints.LAST) is None  # a new run
    assert resume_from(None, rank=0) is None
    assert resume_from(ray.train.Checkpoint.from_directory(str(ray_dir)), rank=1) is not None
    assert "restored" not in capsys.readouterr().out  # only rank 0 says it


def test_a_model_without_training_state_is_not_resumed(tmp_path: Path) -> None:
    save(untrained_checkpoint("sentiment"), tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="no training state to resume from"):
        checkpoints.resume(tmp_path / "last.pt")


def test_weight_norm_is_resumed_parametrized_and_exported_folded() -> None:
    """The stored weights are the training model's (g and v of weight normalization, so a resume
    continues exactly); the rebuilt model has the plain weights w = g v / |v|."""
    from trainer.export import rebuild_model

    saved = mid_epoch_checkpoint(weight_norm=True)
    assert any("parametrizations" in k for k in saved.weights)
    rebuilt = rebuild_model(saved)
    assert not any("parametrizations" in k for k in rebuilt.state_dict())
    assert all(torch.isfinite(v).all() for v in rebuilt.state_dict().values())
