"""The bundles the benchmark serves: trained in-process once, cached under `<out>/models`.

Serving-sized (embedding 64, hidden 256, one GRU layer) and trained on a few hundred examples
of the embedded corpora: speed does not depend on what the weights learned, only on their
shapes. The cache is keyed by these settings and by `LAYOUT`, so changing either retrains.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from scripts.bench.common import Context

TASKS = ("autocomplete", "translation")
SETTINGS: dict[str, Any] = {
    "cell": "gru",
    "embed_dim": 64,
    "hidden_size": 256,
    "num_layers": 1,
    "epochs": 1,
    "max_train_examples": 512,
    "max_valid_examples": 64,
}
STAMP = "bench-models.json"
LAYOUT = 2  # what an export writes; bump when it changes (2: the autocomplete suffix index)


def bench_models(ctx: Context) -> Path:
    """The model repository to serve: `--models`, or the cached benchmark bundles."""
    if ctx.models is not None:
        return ctx.models
    root = ctx.out / "models"
    stamp = root / STAMP
    wanted = {"settings": SETTINGS, "tasks": list(TASKS), "layout": LAYOUT}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and _complete(root):
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for task in TASKS:
        print(f"bench: training the {task} bundle (cached in {root})", flush=True)
        train(task, root)
    stamp.write_text(json.dumps(wanted, indent=2) + "\n")
    return root


def _complete(root: Path) -> bool:
    return all(any(root.glob(f"{task}/*/manifest.json")) for task in TASKS)


def train(task: str, root: Path) -> Path:
    """Train one bundle in-process (no Ray) and export it to `root/<task>/1`."""
    from trainer.cli import run
    from trainer.config import resolve

    with tempfile.TemporaryDirectory() as runs, _quiet(root / f"{task}-train.log"):
        flags = {"task": task, "workers": 0, "out": str(root), "run_dir": runs, **SETTINGS}
        flags |= {"eval_completions": 0, "diagnose_every": 0, "log_every": 1000}
        bundle = run(resolve(flags, environ={}))
    assert bundle is not None  # only a dry run returns None
    return bundle


@contextlib.contextmanager
def _quiet(log: Path) -> Any:
    """Training's progress lines go to a log file, not the benchmark's table."""
    with log.open("w") as f, contextlib.redirect_stdout(f):
        yield


def manifest(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return data


def bundle_for(models: Path, task: str) -> Path:
    """The newest version of the model named `task` (the one the server serves by default)."""
    versions = sorted(models.glob(f"{task}/*/manifest.json"), key=lambda p: int(p.parent.name))
    if not versions:
        raise FileNotFoundError(f"no {task} bundle under {models}")
    return versions[-1].parent
