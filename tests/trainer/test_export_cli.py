"""`recur-export`: re-export a run's checkpoint; clear errors for anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import untrained_checkpoint
from trainer.checkpoint import save
from trainer.export_cli import main


def test_reexport_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    save(untrained_checkpoint("autocomplete", "lstm"), run / "checkpoint.pt")
    for version in ("1", "2"):
        main(["--checkpoint", str(run), "--out", str(tmp_path / "models"), "--name", "ac"])
        assert f"wrote {tmp_path / 'models' / 'ac' / version}" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "models" / "ac" / "2" / "manifest.json").read_text())
    assert manifest["cell"] == "lstm" and manifest["task"] == "TASK_AUTOCOMPLETE"


@pytest.mark.parametrize(
    ("content", "message", "reason"),
    [
        (None, "--checkpoint: no checkpoint at", "missing"),
        (b"not a checkpoint", "is not a Recur checkpoint", "garbage bytes"),
    ],
)
def test_bad_checkpoints_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    message: str,
    reason: str,
) -> None:
    path = tmp_path / "checkpoint.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(path), "--out", str(tmp_path / "m")])
    assert exit_info.value.code == 2, reason
    assert message in capsys.readouterr().err, reason
    assert not (tmp_path / "m").exists()
