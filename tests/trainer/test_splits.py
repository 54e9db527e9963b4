"""Splits carved out of `--train` (`--valid 10%`, `--test 2000`, `--carve end`), several files
as one training set, and the `--test` metrics of the best model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.data import files
from trainer.data.files import DataError


def numbered(path: Path, n: int) -> str:
    path.write_text("".join(f"query {i}\n" for i in range(n)))
    return str(path)


def test_shares_and_counts_are_told_from_files() -> None:
    assert files.share("2000") == 2000
    assert files.share("10%") == pytest.approx(0.1)
    assert files.share("dev.tsv") is None and files.share("") is None
    with pytest.raises(DataError, match="between 0% and 100%"):
        files.share("150%")
    with pytest.raises(DataError, match="at least 1"):
        files.share("0")


def test_random_carve_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    path = numbered(tmp_path / "q.txt", 200)
    a = files.load_splits("text", path, "10%", "30", seed=4, log=None)
    b = files.load_splits("text", path, "10%", "30", seed=4, log=None)
    assert a.test is not None and b.test is not None
    assert (len(a.train), len(a.valid), len(a.test)) == (150, 20, 30)
    assert list(a.test) == list(b.test) and list(a.valid) == list(b.valid)
    seen = [*a.train, *a.valid, *a.test]
    assert sorted(seen) == sorted(f"query {i}" for i in range(200))  # disjoint and complete
    c = files.load_splits("text", path, "10%", "30", seed=5, log=None)
    assert list(c.test) != list(a.test)  # another seed carves other lines


def test_carve_at_the_end_takes_the_last_lines_test_last(tmp_path: Path) -> None:
    path = numbered(tmp_path / "q.txt", 100)
    splits = files.load_splits("text", path, "10%", "5", carve_at="end", log=None)
    assert splits.test is not None
    assert list(splits.test) == [f"query {i}" for i in range(95, 100)]
    assert list(splits.valid) == [f"query {i}" for i in range(85, 95)]
    assert list(splits.train) == [f"query {i}" for i in range(85)]


def test_a_carve_larger_than_the_file_is_refused(tmp_path: Path) -> None:
    path = numbered(tmp_path / "q.txt", 10)
    with pytest.raises(DataError, match="10 usable line"):
        files.load_splits("text", path, "5", "5", log=None)


def test_several_files_of_different_layouts_are_one_training_set(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("1\tfirst query\n2\tsecond query\n")
    (tmp_path / "b.txt").write_text("7:third query\n8:fourth query\n9:fifth query\n")
    (tmp_path / "c.tsv").write_text("sixth query\n")
    splits = files.load_splits(
        "text", f"{tmp_path}/*.txt,{tmp_path / 'c.tsv'}", "1", seed=0, log=None
    )
    texts = sorted([*splits.train, *splits.valid])
    assert texts == sorted(["first query", "second query", "third query", "fourth query",
                            "fifth query", "sixth query"])  # fmt: skip
    assert len(splits.valid) == 1 and len(splits.reports) == 3
    assert "3 files" in splits.description
    with pytest.raises(DataError, match="matches no file"):
        files.load_splits("text", f"{tmp_path}/*.csv", log=None)


def test_test_flag_reports_test_metrics_of_the_best_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`recur-train --test 40` carves a test split, evaluates the best checkpoint on it once,
    and writes the `test_*` metrics into metrics.json and the manifest."""
    from trainer.cli import main

    things = ["movie", "film", "show", "play", "book", "song", "story", "actor", "plot", "scene"]
    lines = [f"{word} {thing}\t{label}"
             for label, words in ((1, "good fine great"), (0, "bad poor awful"))
             for word in words.split() for thing in things]  # fmt: skip
    data = tmp_path / "s.tsv"
    data.write_text("\n".join(lines * 4) + "\n")
    main(["--task", "sentiment", "--data", "files", "--train", str(data), "--valid", "20",
          "--test", "40", "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "models"),
          "--run-dir", str(tmp_path / "runs"), "--run-name", "t", "--embed-dim", "8",
          "--hidden-size", "8", "--batch-size", "16"])  # fmt: skip
    record = json.loads((tmp_path / "runs" / "t" / "metrics.json").read_text())
    assert set(record["test"]) >= {"test_accuracy", "test_loss"}
    assert 0.0 <= record["test"]["test_accuracy"] <= 1.0
    manifest = json.loads((tmp_path / "models" / "sentiment" / "1" / "manifest.json").read_text())
    assert manifest["training"]["metrics"]["test_accuracy"] == pytest.approx(
        record["test"]["test_accuracy"]
    )
    # recur-eval finds the same 40 examples again from the manifest, and scores them through ORT
    from trainer.eval_cli import main as evaluate

    capsys.readouterr()
    evaluate(["--bundle", str(tmp_path / "models" / "sentiment" / "1"), "--data", "held-out"])
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["examples"] == 40
    assert result["metrics"]["accuracy"] == pytest.approx(record["test"]["test_accuracy"])
    with pytest.raises(SystemExit):  # a run that carved nothing: the flag is named
        evaluate(["--bundle", str(tmp_path / "models" / "sentiment" / "1"), "--data", "nope.tsv"])


def test_test_with_builtin_data_is_refused() -> None:
    from trainer.config import resolve

    with pytest.raises(ValueError, match="--test applies to --data files"):
        resolve({"test": "10%"}, environ={})


def test_held_out_of_a_run_that_carved_nothing_is_refused() -> None:
    from trainer.evaluate import held_out

    with pytest.raises(DataError, match="carved no split"):
        held_out("sentiment", {"data": "builtin", "valid": "", "test": ""})
    with pytest.raises(DataError, match="carved no split"):
        held_out("sentiment", {"data": "files", "train": "a.tsv", "valid": "dev.tsv", "test": ""})
