"""Write a model bundle: `<out>/<name>/<version>/` with manifest.json, ONNX graphs, tokenizer.json.

The bundle is assembled in a hidden staging directory next to the versions and renamed into place
in one step, so a server watching the repository never sees half a bundle, and a failed export
leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf import json_format

from protos.recur.v1 import bundle_pb2

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def next_version(model_dir: Path) -> int:
    """One more than the highest numbered version under `model_dir` (1 for a new model)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def staging_dir(out: Path, name: str) -> Path:
    path = out / name / f".staging-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def finalize(staging: Path, manifest: bundle_pb2.BundleManifest) -> Path:
    """Hash every staged file, write the manifest, and move the bundle to its version directory."""
    model_dir = staging.parent
    manifest.version = next_version(model_dir)
    manifest.format_version = FORMAT_VERSION
    manifest.created_at = datetime.now(UTC).isoformat(timespec="seconds")
    manifest.sha256.clear()
    for path in sorted(staging.iterdir()):
        manifest.sha256[path.name] = sha256_file(path)
    text = json_format.MessageToJson(manifest, preserving_proto_field_name=True, indent=2)
    (staging / MANIFEST).write_text(text + "\n")
    target = model_dir / str(manifest.version)
    staging.rename(target)
    return target
