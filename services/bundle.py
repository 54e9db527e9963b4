"""Find and verify model bundles before anything is loaded from them (docs/design.md §3).

A bundle is refused when its manifest is missing or malformed, its format version is unknown, a
file it lists is missing or does not match its sha256, or it holds a file the manifest does not
list. Refusal raises `BundleError`; the caller keeps serving what it already has.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from protos.recur.v1 import bundle_pb2
from services.errors import BundleError

SUPPORTED_FORMAT_VERSIONS = frozenset({1})
MANIFEST = "manifest.json"
TASK_NAMES = {
    bundle_pb2.TASK_TRANSLATION: "translation",
    bundle_pb2.TASK_SENTIMENT: "sentiment",
    bundle_pb2.TASK_AUTOCOMPLETE: "autocomplete",
}
GRAPHS = {
    "translation": {"encoder", "decoder_step"},
    "sentiment": {"classifier_step"},
    "autocomplete": {"lm_step"},
}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: bundle_pb2.BundleManifest

    @property
    def task(self) -> str:
        return TASK_NAMES[self.manifest.task]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> bundle_pb2.BundleManifest:
    manifest_path = path / MANIFEST
    try:
        text = manifest_path.read_text(encoding="utf-8")
        return json_format.Parse(text, bundle_pb2.BundleManifest())
    except FileNotFoundError:
        raise BundleError(f"{path}: no {MANIFEST}") from None
    except (json_format.ParseError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not a valid manifest: {e}") from None


def verify(path: Path) -> Bundle:
    """Verify the bundle at `path` and return it; raises BundleError naming the problem."""
    manifest = read_manifest(path)
    if manifest.format_version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{path}: format version {manifest.format_version} is not supported "
            f"(supported: {sorted(SUPPORTED_FORMAT_VERSIONS)})"
        )
    if manifest.task not in TASK_NAMES:
        raise BundleError(f"{path}: manifest has no valid task")
    if str(manifest.version) != path.name:
        raise BundleError(
            f"{path}: manifest says version {manifest.version}, directory {path.name}"
        )
    on_disk = {p.name for p in path.iterdir() if p.is_file()} - {MANIFEST}
    listed = set(manifest.sha256)
    if on_disk != listed:
        raise BundleError(
            f"{path}: files not in the manifest {sorted(on_disk - listed)}, "
            f"missing files {sorted(listed - on_disk)}"
        )
    inside = path.resolve()
    for name in sorted(listed):  # a link may not lead out (the names themselves are plain)
        if (path / name).resolve().parent != inside:
            raise BundleError(f"{path / name}: resolves outside its bundle directory")
    for name, expected in sorted(manifest.sha256.items()):
        actual = _sha256(path / name)
        if actual != expected:
            raise BundleError(f"{path / name}: sha256 {actual[:12]}… does not match the manifest")
    for graph in manifest.graphs:
        for name in (graph.file, graph.optimized_file, graph.quantized_file):
            if name and name not in listed:  # keeps names like "../x" out: only listed files load
                raise BundleError(f"{path}: graph {graph.role!r} file {name!r} is not listed")
    if manifest.pooling not in ("", "last", "mean", "max"):
        raise BundleError(f"{path}: unknown pooling {manifest.pooling!r} (last, mean or max)")
    task = TASK_NAMES[manifest.task]
    roles = {g.role for g in manifest.graphs}
    if roles != GRAPHS[task] or manifest.tokenizer_file not in listed:
        raise BundleError(
            f"{path}: a {task} bundle needs graphs {sorted(GRAPHS[task])} and a tokenizer"
        )
    return Bundle(path=path, manifest=manifest)


def read_verified(bundle: Bundle, name: str) -> bytes:
    """The bytes of one of the bundle's files, checked against the manifest as they are read, so
    what ONNX Runtime or the tokenizer parses is what was verified, even if the file changed
    after `verify`."""
    data = (bundle.path / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != bundle.manifest.sha256.get(name):
        raise BundleError(f"{bundle.path / name}: sha256 changed after verification")
    return data


def assembling(path: Path, manifest: bundle_pb2.BundleManifest) -> Bundle:
    """A bundle still being assembled in `path` (its manifest not written yet), with the digest
    of every file now in it, so that `read_verified` loads exactly those bytes. Nothing else is
    checked: the exporter is still writing it."""
    staged = bundle_pb2.BundleManifest()
    staged.CopyFrom(manifest)
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.name != MANIFEST):
        staged.sha256[file.name] = _sha256(file)
    return Bundle(path=path, manifest=staged)


def is_version(text: str) -> bool:
    """A version number: ASCII digits only (str.isdigit alone admits "²", which int() refuses)."""
    return text.isascii() and text.isdigit()


def discover(root: Path) -> list[Path]:
    """Every `<root>/<name>/<version>/` directory whose version is a number, sorted."""
    if not root.is_dir():
        return []
    found = [
        version
        for model in sorted(root.iterdir())
        if model.is_dir() and not model.name.startswith(".")
        for version in model.iterdir()
        if version.is_dir() and is_version(version.name)
    ]
    return sorted(found, key=lambda p: (p.parent.name, int(p.name)))
