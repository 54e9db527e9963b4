"""`--config run.toml|run.yaml`: typed settings below the environment and the flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.cli import main
from trainer.config import read_config_file, resolve

TOML = """
task = "translation"
cell = "lstm"
epochs = 3
lr = 1e-3
batch-size = 16   # dashes as in the flag are fine
dry_run = true
"""
YAML = """
task: translation
cell: lstm
epochs: 3
lr: 1e-3          # YAML 1.1 reads this as a string; it is parsed as the field's float
batch-size: 16
dry_run: true
"""
EXPECTED = {"task": "translation", "cell": "lstm", "epochs": 3, "lr": 1e-3, "batch_size": 16,
            "dry_run": True}  # fmt: skip


@pytest.mark.parametrize(("name", "text"), [("run.toml", TOML), ("run.yaml", YAML)])
def test_toml_and_yaml_read_alike(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    values = read_config_file(path)
    assert values == EXPECTED
    assert isinstance(values["lr"], float)
    cfg = resolve({}, {}, values)
    assert (cfg.task, cfg.cell, cfg.epochs, cfg.lr, cfg.batch_size) == ("translation", "lstm", 3,
                                                                        1e-3, 16)  # fmt: skip


@pytest.mark.parametrize(
    ("environ", "flags", "expected", "reason"),
    [
        ({}, {}, 3, "the file overrides the default"),
        ({"RECUR_EPOCHS": "4"}, {}, 4, "the environment overrides the file"),
        ({"RECUR_EPOCHS": "4"}, {"epochs": 5}, 5, "a flag overrides both"),
        ({}, {"epochs": None}, 3, "an unset flag leaves the file's value"),
    ],
)
def test_precedence_default_file_environment_flag(environ: dict[str, str],
                                                  flags: dict[str, object], expected: int,
                                                  reason: str) -> None:  # fmt: skip
    assert resolve(flags, environ, {"epochs": 3}).epochs == expected, reason


@pytest.mark.parametrize(
    ("name", "text", "message", "reason"),
    [
        ("run.toml", 'lerning_rate = 0.1\n', "unknown key 'lerning_rate'", "a typo"),
        ("run.toml", 'batch_sise = 8\n', "unknown key 'batch_sise' (did you mean 'batch_size'?)",
         "a typo close to a field is named with the field"),
        ("run.yaml", "epochs: three\n", "epochs='three' is not a valid int", "not a number"),
        ("run.toml", 'dry_run = "yes"\n', "dry_run must be a bool, got 'yes'", "a string bool"),
        ("run.toml", 'cell = 3\n', "cell must be a str, got 3", "a number for a string"),
        ("run.toml", '[train]\nlr = 1\n', "train must be a str, got {'lr': 1}", "a nested table"),
        ("run.toml", 'epochs = \n', "not valid TOML", "a syntax error"),
        ("run.yaml", "- a\n- b\n", "expected a table of settings, got list", "a YAML list"),
        ("run.ini", "epochs=1\n", "expected a .toml, .yaml or .yml file", "another format"),
    ],
)  # fmt: skip
def test_bad_config_files_exit_2_naming_the_key(
    tmp_path: Path, name: str, text: str, message: str, reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path)])
    assert exit_info.value.code == 2, reason
    err = capsys.readouterr().err
    assert f"--config: {path}" in err and message in err, (reason, err)


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "nope.toml")])
    assert f"--config: no such file: {tmp_path / 'nope.toml'}" in capsys.readouterr().err


def test_flags_override_the_file_in_a_run(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """The printed (and recorded) configuration is the resolved one."""
    path = tmp_path / "run.toml"
    path.write_text(f'task = "sentiment"\nworkers = 0\nepochs = 9\nmax_train_examples = 64\n'
                    f'embed_dim = 8\nhidden_size = 8\nrun_dir = "{tmp_path}/runs"\n'
                    f'run_name = "c"\nout = "{tmp_path}/m"\ndiagnose_every = 0\n')  # fmt: skip
    main(["--config", str(path), "--epochs", "1", "--dry-run"])
    recorded = (tmp_path / "runs" / "c" / "config.json").read_text()
    assert '"epochs": 1,' in recorded and '"hidden_size": 8,' in recorded
    assert '"task": "sentiment"' in capsys.readouterr().out
