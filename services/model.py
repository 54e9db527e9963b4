"""Loaded models: verified bundles with their ONNX Runtime sessions and tokenizer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from protos.recur.v1 import bundle_pb2
from services.bundle import Bundle, discover, is_version, read_verified, verify
from services.errors import BundleError, ModelNotFound
from services.popular import PopularIndex, RankingWeights

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


def graph_file(graph: bundle_pb2.GraphSpec, choice: str) -> str:
    """The file of `graph` to serve: the ORT-optimized copy by default, the int8 copy when asked
    for and present, else the exported graph (older bundles have no copies)."""
    if choice == "int8" and graph.quantized_file:
        return graph.quantized_file
    if choice in ("optimized", "int8") and graph.optimized_file:
        return graph.optimized_file
    return graph.file


class LoadedModel:
    """One model version: a session per graph, the tokenizer and the state layout."""

    def __init__(self, bundle: Bundle, *, ort_threads: int = 1, graphs: str = "optimized") -> None:
        self.bundle = bundle
        manifest = bundle.manifest
        self.name = manifest.name
        self.version = manifest.version
        self.task = bundle.task
        self.labels = tuple(manifest.labels)
        self.pad_id = manifest.special_tokens.pad_id
        self.bos_id = manifest.special_tokens.bos_id
        self.eos_id = manifest.special_tokens.eos_id
        options = ort.SessionOptions()
        options.intra_op_num_threads = ort_threads
        options.inter_op_num_threads = 1
        self.files = {graph.role: graph_file(graph, graphs) for graph in manifest.graphs}
        file = ""  # the file being read, named when it does not load
        try:
            self.sessions = {}
            for role, file in self.files.items():
                self.sessions[role] = ort.InferenceSession(
                    read_verified(bundle, file), options, providers=["CPUExecutionProvider"]
                )
            file = manifest.tokenizer_file
            tokenizer = read_verified(bundle, file).decode("utf-8")
            self.tokenizer = Tokenizer.from_str(tokenizer)
        except BundleError:
            raise
        except Exception as e:  # verified files that ONNX Runtime or the tokenizer cannot parse
            message = " ".join(str(e).split())  # one line in the log
            raise BundleError(
                f"{bundle.path}: {file} verified but does not load: {message}"
            ) from None
        self.outputs = {g.role: [t.name for t in g.outputs] for g in manifest.graphs}
        popular = manifest.popular
        self.popular = _popular_index(bundle, popular.file, "popular-query index")
        self.suffixes = _popular_index(bundle, popular.suffix_file, "suffix index")
        self.ranking = RankingWeights.from_proto(popular.ranking)
        self.suffix_ranking = RankingWeights.from_proto(popular.suffix_ranking)
        # Candidates taken from the index and from the beam per prefix, as when the weights were
        # fit (0 in bundles that predate the field: the fit's 10).
        self.candidates = popular.ranking.candidates or 10

    def zero_state(self, batch: int) -> Arrays:
        """The initial recurrent state for `batch` streams, keyed by graph input name."""
        return {
            spec.input: np.zeros(
                [batch if dim == "batch" else int(dim) for dim in spec.shape], dtype=np.float32
            )
            for spec in self.bundle.manifest.state
        }

    def next_state(self, outputs: Arrays) -> Arrays:
        """The state inputs of the next step from a step's outputs (`h_out` → `h`, ...)."""
        return {spec.input: outputs[spec.output] for spec in self.bundle.manifest.state}

    def encoder_state(self, outputs: Arrays) -> Arrays:
        """The decoder's first state from the encoder's outputs (`h_init` → `h`, ...)."""
        return {spec.input: outputs[f"{spec.input}_init"] for spec in self.bundle.manifest.state}

    def run(self, role: str, feeds: Arrays) -> Arrays:
        """Run one graph (blocking; the engine calls this in its executor)."""
        results = self.sessions[role].run(self.outputs[role], feeds)
        return dict(zip(self.outputs[role], results, strict=True))


def _popular_index(bundle: Bundle, name: str, what: str) -> PopularIndex | None:
    """The bundle's popular-query or suffix index `name`, loaded once with the model (None:
    the bundle has none).

    The file must be one the manifest lists, so its sha256 was checked by `verify`;
    `PopularIndex.load` checks it again as it reads, and checks the arrays.
    """
    if not name:
        return None
    if name not in bundle.manifest.sha256:
        raise BundleError(f"{bundle.path}: {what} {name!r} is not listed")
    return PopularIndex.load(bundle.path / name, sha256=bundle.manifest.sha256[name])


@dataclass
class ModelRegistry:
    """Every loaded model version, and which one serves each task by default."""

    models: dict[tuple[str, int], LoadedModel] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, *, ort_threads: int = 1, graphs: str = "optimized") -> ModelRegistry:
        """Load every bundle under `root`; one that fails verification is logged and skipped."""
        registry = cls()
        for path in discover(root):
            try:
                model = LoadedModel(verify(path), ort_threads=ort_threads, graphs=graphs)
            except BundleError as e:
                log.error("refusing bundle: %s", e)
                continue
            registry.models[(model.name, model.version)] = model
            log.info("loaded %s v%d (%s) from %s", model.name, model.version, model.task, path)
        return registry

    def latest(self, name: str) -> LoadedModel | None:
        versions = [m for (n, _), m in self.models.items() if n == name]
        return max(versions, key=lambda m: m.version, default=None)

    def default_for(self, task: str) -> LoadedModel | None:
        """The model named after the task if there is one, else the first of that task by name."""
        names = sorted({m.name for m in self.models.values() if m.task == task})
        if not names:
            return None
        return self.latest(task if task in names else names[0])

    def resolve(self, name: str, task: str) -> LoadedModel:
        """The model a request asked for (`name`, `name@version`, or the task's default)."""
        name, _, version = name.partition("@")
        if version:
            model = self.models.get((name, int(version))) if is_version(version) else None
            if model is None:
                versions = sorted(v for n, v in self.models if n == name)
                raise ModelNotFound(f"model {name!r} has no loaded version {version!r} "
                                    f"(loaded: {versions or 'none'})")  # fmt: skip
        else:
            model = self.latest(name) if name else self.default_for(task)
        if model is None:
            if name:
                loaded = ", ".join(sorted({n for n, _ in self.models})) or "none"
                raise ModelNotFound(f"unknown model {name!r} (loaded: {loaded})")
            raise ModelNotFound(f"no {task} model is loaded")
        if model.task != task:
            raise ModelNotFound(f"model {name!r} serves {model.task}, not {task}")
        return model
