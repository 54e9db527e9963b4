"""Relaunching a run with the same name resumes it: same result as a run never interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer import cli
from trainer.cli import run
from trainer.config import TrainConfig


def config(tmp_path: Path, name: str, epochs: int) -> TrainConfig:
    return TrainConfig(
        task="sentiment", workers=0, epochs=epochs, max_train_examples=1500, hidden_size=24,
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
