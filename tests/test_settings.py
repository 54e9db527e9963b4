"""`settings`: one declaration per setting drives the flags, RECUR_*, config files and checks of
recur-serve, recur-train and the recur CLI alike."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

import settings
from clients.cli import ConnectionSettings
from services.config import ServeConfig
from settings import setting
from trainer.config import TrainConfig

PROGRAMS = [ServeConfig, TrainConfig, ConnectionSettings]


@dataclass(frozen=True)
class Example:
    port: int = setting(50051, "a port", min=0, max=65535)
    ratio: float = setting(0.5, "a share", above=0, below=1)
    rate: float = setting(1.0, "a rate", above=0)
    color: str = setting("red", "a color", choices=("red", "blue"))
    shade: str = setting("", "a shade", choices=("dark", "light"), blank=True)
    loud: bool = setting(False, "louder")
    name: str | None = setting(None, "a name")


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
def test_every_setting_has_help_and_its_choices_load(program: type) -> None:
    """`specs` refuses a field without a declaration; every declared choice list resolves."""
    for spec in settings.specs(program):
        assert spec.setting.help, spec.name
        assert spec.problem(spec.default) is None, f"{spec.flag}: the default is refused"


@pytest.mark.parametrize(
    ("values", "message", "reason"),
    [
        ({"port": 70000}, "--port must be between 0 and 65535, got 70000", "both bounds"),
        ({"port": -1}, "--port must be between 0 and 65535, got -1", "below the bounds"),
        ({"ratio": 1.0}, "--ratio must be in (0, 1), got 1.0", "exclusive bounds"),
        ({"rate": 0.0}, "--rate must be > 0, got 0.0", "one exclusive bound"),
        ({"rate": float("inf")}, "--rate must be a finite number, got inf", "infinity"),
        ({"rate": float("nan")}, "--rate must be a finite number, got nan", "NaN"),
        ({"color": "green"}, "--color must be one of red, blue, got 'green'", "not a choice"),
        ({"shade": "pale"}, "--shade must be one of dark, light, got 'pale'", "blank unlisted"),
    ],
)  # fmt: skip
def test_bounds_and_choices_name_the_flag(values: dict[str, object], message: str,
                                          reason: str) -> None:  # fmt: skip
    with pytest.raises(ValueError) as info:
        settings.check(Example(**values))
    assert str(info.value) == message, reason


def test_blank_and_the_bounds_themselves_are_accepted() -> None:
    settings.check(Example(port=65535, shade="", rate=1e-9))
    settings.check(Example(port=0, shade="dark"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(word, True) for word in ("1", "true", "TRUE", "yes", "on", "On")]
    + [(word, False) for word in ("0", "false", "no", "off", "OFF")],
)
def test_one_boolean_spelling_for_every_variable(raw: str, expected: bool) -> None:
    for program in (Example, ServeConfig, TrainConfig, ConnectionSettings):
        (name,) = [s.name for s in settings.specs(program) if s.kind is bool][:1]
        values = settings.from_environment(program, {f"RECUR_{name.upper()}": raw})
        assert values == {name: expected}, program


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("RECUR_LOUD", "maybe", "RECUR_LOUD='maybe' is not a valid bool (1/0, true/false, yes/no "
         "or on/off)"),
        ("RECUR_LOUD", "", "RECUR_LOUD='' is not a valid bool"),
        ("RECUR_PORT", "80x", "RECUR_PORT='80x' is not a valid int"),
        ("RECUR_RATE", "fast", "RECUR_RATE='fast' is not a valid float"),
    ],
)  # fmt: skip
def test_a_bad_variable_is_named(variable: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        settings.from_environment(Example, {variable: raw})


def test_precedence_default_file_environment_flag() -> None:
    file_values = {"port": 1, "rate": 2.0, "color": "blue"}
    environ = {"RECUR_PORT": "3", "RECUR_RATE": "4"}
    resolved = settings.resolve(Example, {"port": 5, "rate": None}, environ, file_values)
    assert (resolved.port, resolved.rate, resolved.color, resolved.ratio) == (5, 4.0, "blue", 0.5)


def test_flags_parse_as_none_when_left_out() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, Example)
    assert vars(parser.parse_args([])) == dict.fromkeys(
        ["port", "ratio", "rate", "color", "shade", "loud", "name"]
    )
    given = vars(parser.parse_args(["--port", "7", "--no-loud", "--name", "x"]))
    assert (given["port"], given["loud"], given["name"]) == (7, False, "x")


def test_a_config_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('port = 8\nloud = true\ncolour = "red"\n')
    with pytest.raises(ValueError, match=r"unknown key 'colour' \(did you mean 'color'\?\)"):
        settings.read_file(Example, path)
    path.write_text("port = 8\nloud = true\nratio = 1\n")
    assert settings.read_file(Example, path) == {"port": 8, "loud": True, "ratio": 1.0}


def test_a_field_without_a_declaration_is_refused() -> None:
    @dataclass(frozen=True)
    class Undeclared:
        port: int = 1

    with pytest.raises(TypeError, match=r"Undeclared.port has no setting\(...\) declaration"):
        settings.specs(Undeclared)
    with pytest.raises(ValueError, match="every setting needs help text"):
        setting(1, "")


def test_choices_come_from_the_modules_that_define_them() -> None:
    from services import offline
    from trainer.data import tokenizer
    from trainer.models import recurrent
    from trainer.tasks import TASKS

    def choices(program: type, name: str) -> tuple[str, ...]:
        (spec,) = [s for s in settings.specs(program) if s.name == name]
        return spec.choices()

    assert choices(ServeConfig, "graphs") == offline.GRAPHS
    assert choices(TrainConfig, "cell") == recurrent.CELLS
    assert choices(TrainConfig, "tokenizer") == ("", *tokenizer.TOKENIZERS)
    assert choices(TrainConfig, "task") == tuple(TASKS)


def test_the_docs_flag_tables_follow_the_declarations() -> None:
    """Every program's flag table is in the docs between its markers, as generated; after a
    change to a declaration, `python -m scripts.flag_tables` rewrites them."""
    from scripts import flag_tables

    marked = set()
    for page in flag_tables.pages():
        text = page.read_text()
        marked |= {m[2] for m in flag_tables.MARKED.finditer(text)}
        assert flag_tables.render(text) == text, f"{page.name}: run python -m scripts.flag_tables"
    assert marked == set(flag_tables.PROGRAMS)
