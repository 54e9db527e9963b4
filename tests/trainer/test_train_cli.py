"""`recur-train`: configuration precedence, clear errors, and an in-process run that learns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.config import TrainConfig, resolve


@pytest.mark.parametrize(
    ("environ", "flags", "field", "expected", "reason"),
    [
        ({}, {}, "epochs", 0, "the default"),
        ({"RECUR_EPOCHS": "3"}, {}, "epochs", 3, "the environment overrides the default"),
        ({"RECUR_EPOCHS": "3"}, {"epochs": 5}, "epochs", 5, "a flag overrides the environment"),
        ({"RECUR_DRY_RUN": "true"}, {}, "dry_run", True, "booleans from the environment"),
        ({"RECUR_LR": "0.01"}, {"lr": None}, "lr", 0.01, "an unset flag leaves the environment"),
    ],
)
def test_precedence(environ: dict[str, str], flags: dict[str, object], field: str,
                    expected: object, reason: str) -> None:  # fmt: skip
    assert getattr(resolve(flags, environ), field) == expected, reason


@pytest.mark.parametrize(
    ("argv", "message", "reason"),
    [
        (["--task", "poetry"], "--task must be one of translation, sentiment, autocomplete",
         "unknown task"),
        (["--workers", "-1"], "--workers must be >= 0, got -1", "negative workers"),
        (["--data", "files"], "--data files needs --train", "files without --train"),
        (["--cell", "transformer"], "--cell must be one of gru, lstm, elman, elman_relu, jordan",
         "not a recurrent cell"),
        (["--epochs", "many"], "argument --epochs: invalid int value", "not a number"),
    ],
)  # fmt: skip
def test_bad_flags_exit_2_naming_the_flag(
    argv: list[str], message: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2, reason
    assert message in capsys.readouterr().err, reason


def test_bad_environment_value_is_named() -> None:
    with pytest.raises(ValueError, match="RECUR_EPOCHS='x' is not a valid int"):
        resolve({}, {"RECUR_EPOCHS": "x"})


def test_missing_data_file_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--task", "sentiment", "--data", "files",
         "--train", str(tmp_path / "nope.tsv"), "--workers", "0", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"recur-train: error: {tmp_path / 'nope.tsv'}: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_in_process_training_learns_and_exports(tmp_path: Path) -> None:
    from trainer.cli import run

    cfg = TrainConfig(
        task="sentiment", workers=0, epochs=2, max_train_examples=3000, out=str(tmp_path / "m"),
        run_dir=str(tmp_path / "runs"), run_name="t", log_every=1000,
    )  # fmt: skip
    bundle = run(cfg)
    assert bundle == tmp_path / "m" / "sentiment" / "1"
    assert (tmp_path / "runs" / "t" / "checkpoint.pt").is_file()
    assert (tmp_path / "runs" / "t" / "config.json").read_text().strip() == cfg.to_json()
    import json

    metrics = json.loads((bundle / "manifest.json").read_text())["training"]["metrics"]
    assert metrics["valid_accuracy"] > 0.9  # the rules of the corpus are learnable


def test_dry_run_writes_no_bundle(tmp_path: Path) -> None:
    from trainer.cli import run

    cfg = TrainConfig(task="translation", dry_run=True, max_train_examples=200,
                      out=str(tmp_path / "m"), run_dir=str(tmp_path / "runs"))  # fmt: skip
    assert run(cfg) is None
    assert not (tmp_path / "m").exists()


def test_use_gpu_without_cuda_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        main(["--task", "sentiment", "--workers", "0", "--use-gpu"])
    assert exit_info.value.code == 2
    assert "--use-gpu: no CUDA device is available" in capsys.readouterr().err


def test_malformed_lines_are_skipped_and_summarized(tmp_path: Path) -> None:
    """A file with bad lines trains; the skipped counts reach metrics.json and the manifest."""
    import json

    from trainer.cli import run

    good = [f"{'great fine' if i % 2 else 'awful bad'} film {i}\t{i % 2}" for i in range(60)]
    text = "sentence\tlabel\n" + "\n".join(good) + "\nno label here\n"
    train = tmp_path / "train.tsv"
    train.write_bytes(text.encode() + b"\xe9t\xe9\t1\n")  # the last line is Latin-1
    cfg = TrainConfig(
        task="sentiment", data="files", train=str(train), workers=0, epochs=1, embed_dim=8,
        hidden_size=8, out=str(tmp_path / "m"), run_dir=str(tmp_path / "runs"), run_name="bad",
        log_every=1000, diagnose_every=0,
    )  # fmt: skip
    bundle = run(cfg)
    assert bundle is not None
    report = json.loads((tmp_path / "runs" / "bad" / "metrics.json").read_text())["data"]
    assert report == [{"path": str(train), "lines": 62, "usable": 60, "skipped": {
        "wrong column count (expected 2)": 1, "undecodable bytes (not UTF-8)": 1}}]  # fmt: skip
    data = json.loads((bundle / "manifest.json").read_text())["training"]["data"]
    assert data == f"{train} | valid: 5% of it (random) [GLUE TSV; 2 malformed lines skipped]"


def test_a_file_with_nothing_usable_fails_naming_it(tmp_path: Path) -> None:
    train = tmp_path / "latin1.tsv"
    train.write_bytes("tr\xe8s bien\t1\nna\xefve\t0\n".encode("latin-1"))
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--task", "sentiment", "--data", "files",
         "--train", str(train), "--workers", "0", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"recur-train: error: {train}: no usable lines: all 2 are malformed "
        "(undecodable bytes (not UTF-8): 2)"
    )
