"""One declaration per setting, shared by recur-train, recur-serve and the recur CLI.

A program's settings are one frozen dataclass; each field is declared once:

    port: int = setting(50051, "gRPC port (0: any free port)", min=0, max=65535)

and that declaration drives everything else: the flag `--port` (argparse), the environment
variable `RECUR_PORT`, the key `port` (or `port`'s dashed spelling) of a TOML/YAML config file,
the check of bounds and choices with a message that names the flag, and the flag tables of the
docs (`markdown_table`, written by `python -m scripts.flag_tables`). The field's name is the
setting's one name: the flag and the variable are spelled from it, and code passes it on under
the same name.

Choices are named where they are defined: a tuple, or `"module:NAME"`, the name of a sequence
(or dict) in the module that uses them, read when first needed, so that a config module need
not import model code (nor import it in a cycle).

This package imports the standard library only: the serving side (no torch) and the clients (grpc
and protobuf only) import it as the trainer does (tests/test_architecture.py).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    T = TypeVar("T", bound=DataclassInstance)
else:
    T = TypeVar("T")

KEY = "recur.setting"  # the key of a field's metadata holding its Setting
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")  # RECUR_* booleans
KINDS: dict[type, str] = {int: "int", float: "float", str: "str", bool: "bool"}
METAVARS: dict[type, str] = {int: "N", float: "NUMBER", str: "TEXT"}  # unless declared


@dataclass(frozen=True)
class Setting:
    """What a field's declaration says beyond its type and default (see `setting`)."""

    help: str
    choices: tuple[str, ...] | str = ()
    blank: bool = False
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    metavar: str | None = None


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | str = (),
    blank: bool = False,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    metavar: str | None = None,
) -> Any:
    """A settings dataclass field: `port: int = setting(50051, "gRPC port", min=0, max=65535)`.

    Args:
        default: The value when neither a flag, the environment nor a config file gives one.
        help: What the setting does, for --help and the docs' flag tables.
        choices: The accepted values: a tuple, or "module:NAME" of the sequence that defines them.
        blank: "" is accepted too (the setting is then decided elsewhere, e.g. by the task).
        min: Smallest accepted value; max: largest.
        above: The value must be greater than this; below: smaller than this.
        metavar: The value's name in --help.
    """
    if not help:
        raise ValueError("every setting needs help text")
    declared = Setting(help, choices, blank, min, max, above, below, metavar)
    return field(default=default, metadata={KEY: declared})


@dataclass(frozen=True)
class Spec:
    """One declared field of a settings dataclass, with the names spelled from it."""

    name: str
    kind: type
    default: Any
    setting: Setting

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "RECUR_" + self.name.upper()

    def choices(self) -> tuple[str, ...]:
        """The accepted values (empty: any), the referenced module imported on first use."""
        declared = self.setting.choices
        if isinstance(declared, tuple):
            listed = declared
        else:
            module, _, name = declared.partition(":")
            listed = tuple(getattr(importlib.import_module(module), name))
        return ("", *listed) if self.setting.blank else listed

    def describe(self) -> str:
        """The help text, with the choices when it does not name them all itself."""
        choices = [c for c in self.choices() if c]
        if all(c in self.setting.help for c in choices):
            return self.setting.help
        return f"{self.setting.help} (one of: {', '.join(choices)})"

    def shown_default(self) -> str:
        """The default as --help and the docs show it: `""`, `none`, `true`, `50051`."""
        if self.default == "":
            return '""'
        if self.default is None:
            return "none"
        return str(self.default).lower() if self.kind is bool else str(self.default)

    def problem(self, value: Any) -> str | None:
        """Why `value` is not accepted, naming the flag; None when it is."""
        choices = self.choices()
        if choices and value not in choices:
            listed = ", ".join(c for c in choices if c)
            return f"{self.flag} must be one of {listed}, got {value!r}"
        if self.kind not in (int, float) or value is None:
            return None
        s = self.setting
        if isinstance(value, float) and not math.isfinite(value):
            return f"{self.flag} must be a finite number, got {value}"
        low_ok = (s.min is None or value >= s.min) and (s.above is None or value > s.above)
        high_ok = (s.max is None or value <= s.max) and (s.below is None or value < s.below)
        return None if low_ok and high_ok else f"{self.flag} must be {self.bounds()}, got {value}"

    def bounds(self) -> str:
        """`between 0 and 65535`, `in (0, 1)`, `>= 1`, `> 0`, `<= 2` or `< 1`."""
        s = self.setting
        low = (s.min, "[", ">=") if s.min is not None else (s.above, "(", ">")
        high = (s.max, "]", "<=") if s.max is not None else (s.below, ")", "<")
        if low[0] is not None and high[0] is not None:
            if low[1] == "[" and high[1] == "]":
                return f"between {_number(low[0])} and {_number(high[0])}"
            return f"in {low[1]}{_number(low[0])}, {_number(high[0])}{high[1]}"
        bound = low if low[0] is not None else high
        return f"{bound[2]} {_number(bound[0])}"


def _number(value: float | None) -> str:
    return f"{value:g}"


def specs(cls: type[DataclassInstance]) -> list[Spec]:
    """The declared settings of `cls`, in field order.

    Raises:
        TypeError: a field without a `setting(...)` declaration, or of a type a flag cannot carry.
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        declared = f.metadata.get(KEY)
        if not isinstance(declared, Setting):
            raise TypeError(f"{cls.__name__}.{f.name} has no setting(...) declaration")
        out.append(Spec(f.name, _kind(hints[f.name], f"{cls.__name__}.{f.name}"), f.default,
                        declared))  # fmt: skip
    return out


def _kind(hint: Any, where: str) -> type:
    """int, float, str or bool, from `X` or `X | None`."""
    if isinstance(hint, types.UnionType):
        hint = next((arg for arg in hint.__args__ if arg is not type(None)), None)
    if hint not in KINDS:
        raise TypeError(f"{where}: a setting is an int, float, str or bool, not {hint}")
    return typing.cast(type, hint)


def add_arguments(
    parser: argparse.ArgumentParser, cls: type[DataclassInstance], *, absent: Any = None
) -> None:
    """One flag per setting of `cls`. Flags left out parse as `absent` (None, or
    `argparse.SUPPRESS`: no attribute at all), so that the environment and a config file can
    apply below them (see `resolve`); booleans get `--no-<flag>` too."""
    for spec in specs(cls):
        shown = spec.describe().replace("%", "%%")  # argparse formats help with %
        help_text = f"{shown} (default: {spec.shown_default()}; env {spec.env})"
        if spec.kind is bool:
            parser.add_argument(spec.flag, action=argparse.BooleanOptionalAction, default=absent,
                                help=help_text)  # fmt: skip
        else:
            listed = [c for c in spec.choices() if c]
            metavar = "{" + ",".join(listed) + "}" if listed else METAVARS[spec.kind]
            parser.add_argument(spec.flag, type=spec.kind, default=absent, help=help_text,
                                metavar=spec.setting.metavar or metavar)  # fmt: skip


def parse_text(spec: Spec, raw: str, name: str) -> Any:
    """`raw` (an environment variable's or a YAML string's value) as the setting's type.

    Raises:
        ValueError: `name='raw' is not a valid <type>`; booleans are 1/0, true/false, yes/no or
            on/off in any case.
    """
    text = raw.strip().lower()
    if spec.kind is bool and text in TRUE + FALSE:
        return text in TRUE
    if spec.kind is not bool:
        try:
            return spec.kind(raw)
        except ValueError:
            pass
    hint = " (1/0, true/false, yes/no or on/off)" if spec.kind is bool else ""
    raise ValueError(f"{name}={raw!r} is not a valid {KINDS[spec.kind]}{hint}")


def from_environment(cls: type[DataclassInstance], environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings of `cls` given as `RECUR_<NAME>` in `environ`, parsed (see `parse_text`)."""
    return {s.name: parse_text(s, environ[s.env], s.env) for s in specs(cls) if s.env in environ}


def read_file(cls: type[DataclassInstance], path: str | Path) -> dict[str, Any]:
    """The settings of a `.toml`, `.yaml` or `.yml` file (one flat table; keys as the fields or
    as the flags without their dashes), keyed by field name.

    Raises:
        ValueError: a missing or unparsable file, an unknown key (named, with the closest field),
            or a value of the wrong type; every message starts with `--config: <path>`.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config: no such file: {p}")
    data = _load(p)
    if not isinstance(data, dict):
        raise ValueError(f"--config: {p}: expected a table of settings, got {type(data).__name__}")
    known = {s.name: s for s in specs(cls)}
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"--config: {p}: unknown key {key!r}{hint}")
        values[name] = _file_value(known[name], value, f"--config: {p}: {key}")
    return values


def _load(p: Path) -> Any:
    try:
        if p.suffix.lower() == ".toml":
            with p.open("rb") as f:
                return tomllib.load(f)
        if p.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml  # recur[train] has pyyaml; TOML needs nothing
            except ImportError:
                raise ValueError(
                    f"--config: {p}: YAML needs pyyaml installed (or use TOML)"
                ) from None
            return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config: {p}: not valid TOML: {e}") from None
    except Exception as e:
        if type(e).__module__.startswith("yaml"):
            raise ValueError(f"--config: {p}: not valid YAML: {e}") from None
        raise
    raise ValueError(f"--config: {p}: expected a .toml, .yaml or .yml file")


def _file_value(spec: Spec, value: Any, name: str) -> Any:
    """A config file's `value`, checked against the setting's type."""
    if isinstance(value, str) and spec.kind in (int, float):
        return parse_text(spec, value, name)  # YAML reads 3e-3 (no dot) as a string
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: numeric,
        str: isinstance(value, str),
    }[spec.kind]
    if not ok:
        raise ValueError(f"{name} must be a {KINDS[spec.kind]}, got {value!r}")
    return float(value) if spec.kind is float else value


def resolve(
    cls: type[T],
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    file_values: Mapping[str, Any] | None = None,
) -> T:
    """Defaults < `file_values` (a config file's) < `RECUR_<NAME>` in `environ` < `flags` (those
    given: None means not given), checked by `check`.

    Raises:
        ValueError: a bad environment variable (named) or a value out of bounds or choices (the
            flag named).
    """
    values: dict[str, Any] = dict(file_values or {})
    values.update(from_environment(cls, environ))
    values.update({s.name: flags[s.name] for s in specs(cls) if flags.get(s.name) is not None})
    resolved = cls(**values)
    check(resolved)
    return resolved


def check(settings: DataclassInstance) -> None:
    """Raise ValueError naming the flag of the first setting out of its bounds or choices."""
    for spec in specs(type(settings)):
        if (problem := spec.problem(getattr(settings, spec.name))) is not None:
            raise ValueError(problem)


def markdown_table(cls: type[DataclassInstance], *, config_file: bool = False) -> str:
    """The flag table of a program's docs: flag, environment variable, default, help; with
    `config_file`, a first row for `--config` (see `read_file`)."""
    rows = ["| flag | env | default | what |", "|---|---|---|---|"]
    if config_file:
        rows.append(
            "| `--config FILE` | | | a `.toml` or `.yaml` file of these settings, keys as "
            "the flags without their dashes; the environment and the flags win |"
        )
    for spec in specs(cls):
        flag = f"`{spec.flag}`, `--no-{spec.flag[2:]}`" if spec.kind is bool else f"`{spec.flag}`"
        help_text = spec.describe().replace("|", "\\|")
        rows.append(f"| {flag} | `{spec.env}` | {spec.shown_default()} | {help_text} |")
    return "\n".join(rows) + "\n"


__all__ = [
    "FALSE", "KEY", "TRUE", "Setting", "Spec", "add_arguments", "check", "from_environment",
    "markdown_table", "parse_text", "read_file", "resolve", "setting", "specs",
]  # fmt: skip
