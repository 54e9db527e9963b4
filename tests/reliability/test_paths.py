"""Nothing from a request or a manifest reaches outside the models directory, and nothing
reaches ONNX Runtime before its sha256 is checked.

Model names are registry keys, never paths: a name with a separator, a parent reference or a NUL
is INVALID_ARGUMENT, anything else is looked up among the loaded models (NOT_FOUND when absent).
Version numbers are ASCII digits only, in requests and in the repository's directory names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.bundle import discover
from services.errors import InvalidArgument, ModelNotFound
from services.model import ModelRegistry
from services.validation import model_name


@pytest.fixture(scope="module")
def registry(tiny_models: Path) -> ModelRegistry:
    return ModelRegistry.load(tiny_models)


@pytest.mark.parametrize(
    ("name", "outcome", "reason"),
    [
        ("../autocomplete", "invalid", "a parent reference"),
        ("autocomplete/1", "invalid", "a path separator"),
        ("..\\autocomplete", "invalid", "a Windows separator"),
        ("/etc/passwd", "invalid", "an absolute path"),
        ("autocomplete\x00", "invalid", "a NUL byte"),
        ("a" * 201, "invalid", "longer than 200 characters"),
        ("..", "missing", "a bare parent reference is only a name, and none is loaded"),
        ("autocomplete@\u00b2", "missing", "superscript two: a digit to isdigit, not to int"),
        ("autocomplete@\u0661", "missing", "Arabic-Indic one: ASCII digits only"),
        ("autocomplete@1.0", "missing", "not an integer"),
        ("autocomplete@-1", "missing", "negative"),
        ("autocomplete@" + "9" * 40, "missing", "beyond any version"),
        ("autocomplete@01", "found", "leading zeros are still version 1"),
        ("@", "found", "no name, no version: the task's default"),
        ("sentiment", "missing", "a model of another task"),
    ],
)
def test_model_names_are_keys_never_paths(
    registry: ModelRegistry, name: str, outcome: str, reason: str
) -> None:
    if outcome == "invalid":
        with pytest.raises(InvalidArgument, match=r"^model is not a valid model name"):
            model_name(name)
        return
    assert model_name(name) == name, reason
    if outcome == "missing":
        with pytest.raises(ModelNotFound):
            registry.resolve(name, "autocomplete")
    else:
        model = registry.resolve(name, "autocomplete")
        assert (model.name, model.version) == ("autocomplete", 1), reason


def test_only_ascii_numbered_directories_are_versions(tmp_path: Path) -> None:
    """Odd directory names in the repository are skipped, not crashed on (a scan that raised
    would stop `recur-serve` at start and every later hot reload)."""
    for name in ("1", "12", "\u00b2", "\u0661", "-1", "1.5", " 1", "x", ".3"):
        (tmp_path / "m" / name).mkdir(parents=True)
    (tmp_path / ".hidden" / "1").mkdir(parents=True)
    assert [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path)] == ["m/1", "m/12"]
