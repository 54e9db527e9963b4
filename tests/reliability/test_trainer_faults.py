"""Faults while training, through the trainer's public entry points only (`recur-train`,
`python -m trainer`): hostile data files, a full disk, the driver killed (again and again, at
any moment, checkpoint writes included) and relaunched under the same run name, and a Ray worker
killed mid-training.

Data: every file below fails with exit 1 and one line naming the file and the reason, or trains
with its bad lines counted by reason in metrics.json and the bundle's manifest."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

TINY = ["--workers", "0", "--epochs", "1", "--embed-dim", "8", "--hidden-size", "8",
        "--log-every", "1000", "--diagnose-every", "0"]  # fmt: skip
GOOD = [f"{'great fine' if i % 2 else 'awful bad'} film {i}\t{i % 2}" for i in range(40)]


def _train(tmp_path: Path, *flags: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *flags,
         "--out", str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def _main(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    """`recur-train` in this process (torch is imported once): exit code, stdout, stderr."""
    from trainer.cli import main

    capsys.readouterr()
    try:
        main([*flags, "--out", str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs")])
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _utf16(text: str) -> bytes:
    return text.encode("utf-16")


BAD_FILES = [
    ("sentiment", b"", "empty file", "an empty file"),
    ("sentiment", b"\n  \n\t\n", "no usable lines: all 3 are malformed (empty line: 3)",
     "only blank lines"),
    ("sentiment", _utf16("\n".join(GOOD)), "UTF-16 encoded (byte-order mark); convert it to UTF-8",
     "UTF-16"),
    ("sentiment", "\n".join(GOOD).encode("cp1252").replace(b"film", b"f\xe9lm"),
     "no usable lines: all 40 are malformed (undecodable bytes (not UTF-8): 40)", "Windows-1252"),
    ("sentiment", b"a\tb\tc\td\n" * 5, "no usable lines: all 5 are malformed (wrong column count",
     "a TSV with four columns"),
    ("sentiment", b"no tab at all\n" * 5, "no usable lines", "a TSV with one column"),
    ("sentiment", b"good\x00film\t1\n" * 3, "no usable lines: all 3 are malformed (NUL bytes",
     "NUL bytes"),
    ("autocomplete", bytes(random.Random(0).randrange(128, 256) for _ in range(4000)),
     "no usable lines", "binary noise"),
]  # fmt: skip


@pytest.mark.parametrize(("task", "content", "message", "reason"), BAD_FILES)
def test_a_file_with_nothing_usable_fails_saying_why(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    task: str,
    content: bytes,
    message: str,
    reason: str,
) -> None:
    train = tmp_path / "train.txt"
    train.write_bytes(content)
    code, _, err = _main(tmp_path, capsys, "--task", task, "--data", "files", "--train",
                         str(train), *TINY)  # fmt: skip
    assert code == 1, (reason, err[-2000:])
    assert len(err.strip().splitlines()) == 1, f"{reason}: one line, no traceback: {err[-2000:]}"
    assert err.startswith(f"recur-train: error: {train}: {message}"), (reason, err)
    assert not (tmp_path / "models").exists(), "no bundle"


@pytest.mark.parametrize(
    ("files", "message", "reason"),
    [
        ((b"the dog\nthe cat\n", b"der Hund\n"), "{0} has 2 lines but {1} has 1", "misaligned"),
        ((None,), "{0}: no such file", "a missing file"),
        (("dir",), "{0}: no such file", "a directory"),
    ],
)
def test_missing_and_misaligned_files_fail_saying_why(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: tuple[bytes | str | None, ...],
    message: str,
    reason: str,
) -> None:
    paths = [tmp_path / f"train{i}.txt" for i in range(len(files))]
    for path, content in zip(paths, files, strict=True):
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content == "dir":
            path.mkdir()
    spec = ",".join(map(str, paths))
    code, _, err = _main(tmp_path, capsys, "--task", "translation", "--data", "files",
                         "--train", spec, *TINY)  # fmt: skip
    assert code == 1, reason
    assert err.strip() == "recur-train: error: " + message.format(*paths), reason


def test_messy_data_trains_and_counts_every_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        "\ufeffsentence\tlabel",  # a byte-order mark before a GLUE header
        *GOOD[:20],
        "three\tcolumns\there",
        "no label",
        "",
        "   ",
        *[line + "\r" for line in GOOD[20:]],  # Windows line ends
    ]
    raw = "\n".join(lines).encode() + b"\n\xe9t\xe9 latin-1\t1\nnul\x00\t0\n"
    train = tmp_path / "train.tsv"
    train.write_bytes(raw)
    code, out, err = _main(tmp_path, capsys, "--task", "sentiment", "--data", "files",
                           "--train", str(train), "--run-name", "messy", *TINY)  # fmt: skip
    assert code == 0, err[-3000:]
    report = json.loads((tmp_path / "runs" / "messy" / "metrics.json").read_text())["data"]
    assert report == [{"path": str(train), "lines": 46, "usable": 40, "skipped": {
        "wrong column count (expected 2)": 2, "empty line": 2,
        "undecodable bytes (not UTF-8)": 1, "NUL bytes (not UTF-8 text)": 1}}]  # fmt: skip
    assert "6 malformed lines skipped" in out


def test_a_full_disk_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checkpoint's temporary file is /dev/full, where every write fails with ENOSPC."""
    run = tmp_path / "runs" / "full"
    run.mkdir(parents=True)
    (run / "last.pt.tmp").symlink_to("/dev/full")
    code, _, err = _main(tmp_path, capsys, "--task", "sentiment", "--run-name", "full",
                         "--max-train-examples", "200", *TINY)  # fmt: skip
    assert code == 1
    assert err.strip().startswith("recur-train: error:")
    assert "No space left on device" in err


def _final_metrics(run: Path) -> dict[str, float]:
    history = json.loads((run / "metrics.json").read_text())["history"]
    return {k: v for k, v in history[-1].items() if k.startswith("valid_")}


def _checkpoint_loads(path: Path) -> bool:
    import torch

    torch.load(path, map_location="cpu", weights_only=False)  # the test's own file
    return True


@pytest.mark.slow
def test_a_driver_killed_again_and_again_resumes_to_the_same_result(tmp_path: Path) -> None:
    """`recur-train` SIGKILLed at random moments (checkpointing every step, so kills land in
    checkpoint writes too) and relaunched with the same --run-name: every kill leaves a loadable
    last.pt, and the run ends with the validation metrics of an uninterrupted run (same seed)."""
    flags = ["--task", "autocomplete", "--workers", "0", "--epochs", "3", "--embed-dim", "16",
             "--hidden-size", "32", "--max-train-examples", "600", "--checkpoint-every-steps", "1",
             "--log-every", "1000", "--diagnose-every", "0", "--seed", "3"]  # fmt: skip
    whole = _train(tmp_path / "whole", *flags, "--run-name", "whole", timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "killed" / "runs" / "killed"
    rng, kills = random.Random(1), 0
    command = [sys.executable, "-m", "trainer", *flags, "--run-name", "killed",
               "--out", str(tmp_path / "killed" / "models"),
               "--run-dir", str(tmp_path / "killed" / "runs")]  # fmt: skip
    for _ in range(4):
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        started = time.monotonic()
        while not (run / "last.pt").exists() and process.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 3.0))
        if process.poll() is not None:
            break
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        kills += 1
        assert _checkpoint_loads(run / "last.pt"), f"kill {kills} at {time.monotonic() - started}"
    final = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    assert kills >= 2, "the run was interrupted"
    expected, got = _final_metrics(tmp_path / "whole" / "runs" / "whole"), _final_metrics(run)
    print(f"driver killed {kills} times; resumed {got}, uninterrupted {expected}")
    assert got == pytest.approx(expected, rel=1e-4), (kills, got, expected)


@pytest.mark.slow
@pytest.mark.ray
def test_a_ray_worker_killed_mid_training_recovers_from_its_checkpoint(tmp_path: Path) -> None:
    """Two Ray Train workers; one is SIGKILLed after the first epoch's checkpoint. FailureConfig
    restarts the group from that checkpoint and the run ends with the validation metrics of an
    uninterrupted run of the same seed (within 1e-3)."""
    flags = ["--task", "sentiment", "--workers", "2", "--epochs", "6", "--embed-dim", "32",
             "--hidden-size", "64", "--max-train-examples", "4000", "--max-failures", "2",
             "--log-every", "1000", "--diagnose-every", "0", "--seed", "5"]  # fmt: skip
    whole = _train(tmp_path / "whole", *flags, "--run-name", "whole", timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    command = [sys.executable, "-m", "trainer", *flags, "--run-name", "hit",
               "--out", str(tmp_path / "hit" / "models"),
               "--run-dir", str(tmp_path / "hit" / "runs")]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert process.stdout is not None
    output, killed = [], None
    for line in process.stdout:
        output.append(line)
        worker = re.search(r"\(RayTrainWorker pid=(\d+)\)", line)
        if killed is None and worker and "checkpoint saved:" in line:  # trainer/ray_job.py
            killed = int(worker.group(1))  # the worker that reported the first checkpoint
            os.kill(killed, signal.SIGKILL)
    assert process.wait(900) == 0, "".join(output[-60:])
    assert killed is not None, "a worker was killed"
    expected = _final_metrics(tmp_path / "whole" / "runs" / "whole")
    got = _final_metrics(tmp_path / "hit" / "runs" / "hit")
    print(f"Ray worker {killed} killed; recovered {got}, uninterrupted {expected}")
    assert got == pytest.approx(expected, rel=1e-3), (got, expected)
