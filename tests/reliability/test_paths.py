"""Nothing from a request or a manifest reaches outside the models directory, and nothing
reaches ONNX Runtime before its sha256 is checked.

Model names are registry keys, never paths: a name with a separator, a parent reference or a NUL
is INVALID_ARGUMENT, anything else is looked up among the loaded models (NOT_FOUND when absent).
Version numbers are ASCII digits only, in requests and in the repository's directory names.
"""

from __future__ import annotations

import ast
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import services.model
from services.bundle import discover, verify
from services.errors import BundleError, InvalidArgument, ModelNotFound
from services.model import LoadedModel, ModelRegistry
from services.validation import model_name
from tests.conftest import ROOT


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


def _bundle(tiny_models: Path, tmp_path: Path) -> Path:
    bundle = tmp_path / "repo" / "sentiment" / "1"
    shutil.copytree(tiny_models / "sentiment" / "1", bundle)
    return bundle


def _edit_manifest(bundle: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _graph_file(name: str) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        manifest["graphs"][0]["optimized_file"] = name

    return change


def _tokenizer(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest.__setitem__("tokenizer_file", name)


def _hash_entry(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest["sha256"].__setitem__(name, "0" * 64)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_graph_file("../../autocomplete/1/lm_step.onnx"), "a graph in another bundle"),
        (_graph_file("/etc/passwd"), "an absolute path"),
        (_tokenizer("../1/tokenizer.json"), "a tokenizer up and back down"),
        (_hash_entry("../../../outside.onnx"), "a hashed file outside the bundle"),
        (_hash_entry("sub/dir.onnx"), "a file in a subdirectory"),
    ],
)
def test_a_manifest_cannot_name_a_file_outside_its_bundle(
    tiny_models: Path, tmp_path: Path, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    bundle = _bundle(tiny_models, tmp_path)
    _edit_manifest(bundle, change)
    with pytest.raises(BundleError):
        verify(bundle)


def test_a_link_out_of_the_bundle_is_refused(tiny_models: Path, tmp_path: Path) -> None:
    """Even with the right sha256: a listed file must lie in its bundle's directory."""
    bundle = _bundle(tiny_models, tmp_path)
    outside = tmp_path / "elsewhere.json"
    shutil.move(bundle / "tokenizer.json", outside)
    (bundle / "tokenizer.json").symlink_to(outside)
    with pytest.raises(BundleError, match="outside its bundle"):
        verify(bundle)


def test_a_tampered_graph_never_reaches_onnx_runtime(
    tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[object] = []
    real = services.model.ort.InferenceSession
    monkeypatch.setattr(
        services.model.ort,
        "InferenceSession",
        lambda model, *a, **k: parsed.append(model) or real(model, *a, **k),
    )
    bundle = _bundle(tiny_models, tmp_path)
    with (bundle / "classifier_step.opt.onnx").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    assert ModelRegistry.load(tmp_path / "repo").models == {}
    assert parsed == [], "refused before ONNX Runtime parsed anything"


def test_onnx_runtime_parses_the_bytes_it_verified(tiny_models: Path, tmp_path: Path) -> None:
    """A graph swapped for another valid one between verification and loading is refused, not
    served unverified (ONNX Runtime gets the bytes whose sha256 was checked)."""
    bundle = _bundle(tiny_models, tmp_path)
    verified = verify(bundle)
    shutil.copy(bundle / "classifier_step.onnx", bundle / "classifier_step.opt.onnx")
    with pytest.raises(BundleError, match="sha256"):
        LoadedModel(verified)


UNPICKLERS = ("pickle", "cPickle", "dill", "cloudpickle", "marshal")
UNSAFE = ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "joblib.load", "eval", "exec")


def _unsafe_calls(source: str) -> list[str]:
    """Calls that can run code from the data they read."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name == "torch.load" and keywords.get("weights_only") != "True":
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif name in UNSAFE or (
            name.split(".")[0] in UNPICKLERS and name.endswith((".load", ".loads", ".Unpickler"))
        ):
            found.append(f"line {node.lineno}: {name}")
        elif name in ("np.load", "numpy.load") and keywords.get("allow_pickle") == "True":
            found.append(f"line {node.lineno}: {name}(allow_pickle=True)")
    return found


@pytest.mark.parametrize(
    "package",
    [
        "services",
        "clients",
        "scripts",
        "trainer",
    ],
)
def test_nothing_a_user_supplies_is_unpickled(package: str) -> None:
    found = {
        str(path.relative_to(ROOT)): calls
        for path in sorted((ROOT / package).rglob("*.py"))
        if (calls := _unsafe_calls(path.read_text(encoding="utf-8")))
    }
    assert found == {}
