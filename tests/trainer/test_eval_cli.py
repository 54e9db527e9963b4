"""`recur-eval`: metrics as JSON for a bundle; clear errors naming the flag, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import untrained_checkpoint
from trainer.eval_cli import main
from trainer.export import export_checkpoint


@pytest.fixture(scope="module")
def sentiment_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    return export_checkpoint(untrained_checkpoint("sentiment"), out=out, name="sentiment")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    main(argv)
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_builtin_validation_split_with_a_limit(
    sentiment_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(["--bundle", str(sentiment_bundle), "--data", "builtin", "--limit", "20"], capsys)
    assert result["task"] == "sentiment" and result["graphs"] == "fp32"
    metrics = result["metrics"]
    assert isinstance(metrics, dict) and metrics["examples"] == 20
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0


def test_a_data_file_through_the_optimized_graphs(
    sentiment_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\ngreat plot\t1\nboring and slow\t0\nnot good\t0\n")
    argv = ["--bundle", str(sentiment_bundle), "--data", str(data)]
    fp32 = run(argv, capsys)["metrics"]
    optimized = run([*argv, "--graphs", "optimized"], capsys)["metrics"]
    assert isinstance(fp32, dict) and fp32["examples"] == 3
    assert optimized == pytest.approx(fp32)


@pytest.mark.parametrize(
    ("args", "message", "reason"),
    [
        (["--bundle", "{tmp}/nowhere", "--data", "builtin"], "--bundle: no bundle at", "missing"),
        (["--bundle", "{tmp}", "--data", "builtin"], "--bundle: ", "a directory, no manifest"),
        (["--bundle", "{bundle}", "--data", "{tmp}/none.tsv"], "--data: ", "missing data file"),
        (["--bundle", "{bundle}", "--data", "{tmp}/bad.tsv"], "--data: ", "not labelled rows"),
        (["--bundle", "{bundle}", "--data", "{tmp}/label7.tsv"], "--data: ", "not a class"),
        (
            ["--bundle", "{bundle}", "--data", "builtin", "--graphs", "int8"],
            "--graphs int8",
            "none",
        ),
        (["--bundle", "{bundle}", "--data", "builtin", "--limit", "-1"], "--limit", "negative"),
        (
            ["--bundle", "{bundle}", "--data", "builtin", "--beam-size", "4"],
            "--beam-size applies to translation",
            "beam search of a classifier",
        ),
        (["--bundle", "{bundle}", "--data", "builtin", "--beam-size", "-2"], "--beam-size", "neg"),
    ],
)
def test_errors_name_the_flag_and_exit_2(
    sentiment_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
    reason: str,
) -> None:
    (tmp_path / "bad.tsv").write_text("just one column\n")
    (tmp_path / "label7.tsv").write_text("good film\t7\n")
    argv = [a.format(tmp=tmp_path, bundle=sentiment_bundle) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2, reason
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, reason
