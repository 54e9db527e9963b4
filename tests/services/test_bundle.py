"""Bundle verification: the service refuses any bundle that fails, and keeps serving the rest."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from services.bundle import discover, verify
from services.errors import BundleError
from services.model import LoadedModel, ModelRegistry


def corrupt_graph(bundle: Path) -> None:
    with (bundle / "classifier_step.onnx").open("ab") as f:
        f.write(b"\0")


def set_manifest(key: str, value: object) -> Callable[[Path], None]:
    def change(bundle: Path) -> None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest[key] = value
        (bundle / "manifest.json").write_text(json.dumps(manifest))

    return change


CASES = [
    (corrupt_graph, "does not match the manifest", "a graph file changed after export"),
    (set_manifest("format_version", 99), "format version 99 is not supported", "unknown format"),
    (lambda b: (b / "extra.bin").write_bytes(b"x"), "files not in the manifest ['extra.bin']",
     "a file the manifest does not list"),
    (lambda b: (b / "tokenizer.json").unlink(), "missing files ['tokenizer.json']", "missing file"),
    (lambda b: (b / "manifest.json").write_text("{not json"), "not a valid manifest",
     "malformed manifest"),
    (lambda b: (b / "manifest.json").unlink(), "no manifest.json", "no manifest"),
]  # fmt: skip


@pytest.mark.parametrize(("damage", "message", "reason"), CASES)
def test_damaged_bundle_is_refused(
    tiny_models: Path, tmp_path: Path, damage: Callable[[Path], None], message: str, reason: str
) -> None:
    bundle = tmp_path / "sentiment" / "1"
    shutil.copytree(tiny_models / "sentiment" / "1", bundle)
    verify(bundle)  # intact: accepted
    damage(bundle)
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        verify(bundle)


@pytest.mark.parametrize(
    "name", ["classifier_step.onnx", "tokenizer.json"], ids=["graph", "tokenizer"]
)
def test_a_verified_file_that_does_not_parse_is_named(
    tiny_models: Path, tmp_path: Path, name: str
) -> None:
    """A file whose sha256 the manifest lists (an export that wrote garbage) passes
    verification; loading it fails with the file's name, on one line."""
    bundle = tmp_path / "sentiment" / "1"
    shutil.copytree(tiny_models / "sentiment" / "1", bundle)
    (bundle / name).write_bytes(b"not a graph, not a tokenizer")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sha256"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as refused:
        LoadedModel(verify(bundle), graphs="fp32")  # the graph file the manifest exported
    assert f"{name} verified but does not load" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_registry_skips_a_bad_bundle_and_loads_the_rest(tiny_models: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_models, repo)
    shutil.copytree(repo / "sentiment" / "1", repo / "sentiment" / "2")
    set_manifest("version", 2)(repo / "sentiment" / "2")
    corrupt_graph(repo / "sentiment" / "2")
    (repo / "sentiment" / ".staging-123").mkdir()  # an export in progress is not a version
    assert [p.relative_to(repo).as_posix() for p in discover(repo)] == [
        "autocomplete/1", "sentiment/1", "sentiment/2", "translation/1",
    ]  # fmt: skip
    registry = ModelRegistry.load(repo)
    assert sorted(registry.models) == [("autocomplete", 1), ("sentiment", 1), ("translation", 1)]
    assert registry.resolve("", "sentiment").version == 1
