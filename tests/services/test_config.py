"""`recur-serve`'s settings: flags over RECUR_* over a --config file over the defaults, and a bad
value refused with exit 2 and a message naming the flag (or the variable, or the key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.config import ServeConfig, resolve


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str]) -> str:
    with pytest.raises(SystemExit) as exited:
        resolve(argv, environ)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_defaults_environment_and_flags() -> None:
    assert resolve([], {}) == ServeConfig()
    environ = {"RECUR_PORT": "7000", "RECUR_METRICS": "off", "RECUR_INLINE_STEP_MS": "0"}
    cfg = resolve(["--port", "7001"], environ)
    assert (cfg.port, cfg.metrics, cfg.inline_step_ms) == (7001, False, 0.0)
    assert resolve(["--metrics"], environ).metrics is True


def test_a_config_file_below_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('max-streams = 8\nexecutor_workers = 3\ngraphs = "fp32"\n')
    cfg = resolve(["--config", str(path)], {"RECUR_MAX_STREAMS": "9"})
    assert (cfg.max_streams, cfg.executor_workers, cfg.graphs) == (9, 3, "fp32")


@pytest.mark.parametrize(
    ("argv", "environ", "message", "reason"),
    [
        (["--port", "70000"], {}, "--port must be between 0 and 65535, got 70000", "bounds"),
        (["--health-port", "-2"], {}, "--health-port must be between -1 and 65535, got -2",
         "-1 is off, -2 nothing"),
        ([], {"RECUR_PROCESSES": "0"}, "--processes must be >= 1, got 0",
         "the environment is checked as the flag is"),
        (["--session-ttl-seconds", "0"], {}, "--session-ttl-seconds must be > 0, got 0.0",
         "strictly positive"),
        (["--grace-seconds", "inf"], {}, "--grace-seconds must be a finite number, got inf",
         "infinity"),
        (["--graphs", "fp16"], {}, "--graphs must be one of fp32, optimized, int8, got 'fp16'",
         "choices of services.offline"),
        ([], {"RECUR_METRICS": "maybe"}, "RECUR_METRICS='maybe' is not a valid bool",
         "one boolean spelling"),
        ([], {"RECUR_PORT": "http"}, "RECUR_PORT='http' is not a valid int", "not a number"),
        (["--tls-cert-file", "c.pem"], {}, "--tls-cert-file and --tls-key-file come together",
         "a check across settings"),
    ],
)  # fmt: skip
def test_bad_settings_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], message: str,
    reason: str,
) -> None:  # fmt: skip
    assert message in refused(capsys, argv, environ), reason


def test_a_bad_config_key_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text("max_stream = 8\n")
    err = refused(capsys, ["--config", str(path)], {})
    assert f"--config: {path}: unknown key 'max_stream' (did you mean 'max_streams'?)" in err
