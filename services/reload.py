"""Hot reload: new model versions appear while the server runs; none of its streams notice.

Every `interval` seconds the repository is scanned. A new `<name>/<version>/` directory is
verified and loaded off the event loop, warmed, and only then added to the registry, so new
streams go to it while streams in flight finish on the version they started with (they hold their
own reference). A bundle that fails verification is logged and skipped, and retried only when its
directory changes; a version whose directory is removed is unloaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.bundle import discover, verify
from services.engine import Engine
from services.errors import BundleError
from services.model import LoadedModel

log = logging.getLogger(__name__)


def warm_up(model: LoadedModel) -> None:
    """Run every graph once at batch 1 and 8 (ONNX Runtime allocates on first use)."""
    for batch in (1, 8):
        state = model.zero_state(batch)
        tokens = np.full((batch, 2), model.bos_id, dtype=np.int64)
        if model.task == "translation":
            out = model.run("encoder", {"src": tokens, "src_len": np.full(batch, 2)})
            feeds = {"prev": tokens[:, :1], **model.encoder_state(out), "memory": out["memory"],
                     "src_mask": np.ones((batch, 2), dtype=bool)}  # fmt: skip
            model.run("decoder_step", feeds)
        else:
            role = "lm_step" if model.task == "autocomplete" else "classifier_step"
            model.run(role, {"tokens": tokens, **state})


def load(path: Path, ort_threads: int, graphs: str) -> LoadedModel:
    """Verify, load and warm one bundle (blocking)."""
    model = LoadedModel(verify(path), ort_threads=ort_threads, graphs=graphs)
    try:
        warm_up(model)
    except Exception as e:  # graphs that load but do not run as the manifest says
        message = " ".join(str(e).split())  # one line in the log
        files = ", ".join(model.files.values())
        raise BundleError(f"{path}: loads but does not run ({files}): {message}") from None
    return model


class Reloader:
    """Keeps an engine's registry in step with the repository on disk."""

    def __init__(
        self,
        engine: Engine,
        root: Path,
        *,
        ort_threads: int,
        graphs: str = "optimized",
        on_change: Callable[[LoadedModel, bool], None] = lambda model, loaded: None,
    ) -> None:
        self.engine = engine
        self.root = root
        self.ort_threads = ort_threads
        self.graphs = graphs
        self.on_change = on_change
        self._refused: dict[Path, float] = {}  # path -> mtime when it was refused

    async def scan(self) -> list[LoadedModel]:
        """Load what is new, unload what is gone; returns the models loaded by this scan."""
        registry = self.engine.registry
        on_disk = discover(self.root)
        loaded_paths = {m.bundle.path: key for key, m in registry.models.items()}
        for path, key in loaded_paths.items():
            if path not in on_disk:
                model = registry.models.pop(key)
                self.engine.forget(model)
                self.on_change(model, False)
                log.info("unloaded %s v%d: %s is gone", model.name, model.version, path)
        loop = asyncio.get_running_loop()
        added = []
        for path in on_disk:
            if path in loaded_paths or self._refused.get(path) == _mtime(path):
                continue
            try:
                model = await loop.run_in_executor(None, load, path, self.ort_threads, self.graphs)
            except BundleError as e:
                self._refused[path] = _mtime(path)
                log.error("refusing bundle: %s", e)
                continue
            self._refused.pop(path, None)
            registry.models[(model.name, model.version)] = model
            self.on_change(model, True)
            added.append(model)
            files = ", ".join(sorted(model.files.values()))
            log.info("loaded %s v%d (%s) from %s: %s", model.name, model.version, model.task,
                     path, files)  # fmt: skip
        return added


def _mtime(path: Path) -> float:
    """The latest modification time in a bundle directory (changes when files are replaced)."""
    try:
        return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.iterdir())])
    except OSError:
        return 0.0
