"""A model bundle's graphs as ONNX Runtime sessions, for evaluation on the trainer side.

The service has its own loader (`services/model.py`); the trainer may not import it (DESIGN §1),
and it needs more: any of a bundle's graph variants (the exported fp32 graphs, their ORT-optimized
copies, their int8 copies), and a bundle still in its staging directory, before its manifest is
written, so that the export can measure the int8 graphs before it accepts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import json_format
from tokenizers import Tokenizer

from protos.recur.v1 import bundle_pb2
from trainer.optimize import session_options

Arrays = dict[str, np.ndarray]
VARIANTS = ("fp32", "optimized", "int8")
TASK_NAMES = {
    bundle_pb2.TASK_TRANSLATION: "translation",
    bundle_pb2.TASK_SENTIMENT: "sentiment",
    bundle_pb2.TASK_AUTOCOMPLETE: "autocomplete",
}


class BundleReadError(ValueError):
    """A bundle that cannot be evaluated, with a message naming the path and the problem."""


class VariantMissing(BundleReadError):
    """The bundle has no copy of its graphs in the asked variant (e.g. no int8 graphs)."""


def graph_file(spec: bundle_pb2.GraphSpec, variant: str) -> str:
    """The file of `spec` that holds `variant` ("" when the bundle has no such copy)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown graph variant {variant!r}; expected one of {VARIANTS}")
    return {"fp32": spec.file, "optimized": spec.optimized_file, "int8": spec.quantized_file}[
        variant
    ]


@dataclass
class OrtBundle:
    """One bundle's sessions (one per graph role), tokenizer and state layout."""

    path: Path
    manifest: bundle_pb2.BundleManifest
    variant: str
    sessions: dict[str, ort.InferenceSession]
    tokenizer: Tokenizer

    @classmethod
    def open(
        cls, path: Path, manifest: bundle_pb2.BundleManifest, *, variant: str = "fp32"
    ) -> OrtBundle:
        """Sessions for the `variant` graphs of the bundle in `path` described by `manifest`."""
        sessions = {}
        for spec in manifest.graphs:
            name = graph_file(spec, variant)
            if not name:
                raise VariantMissing(f"{path}: graph {spec.role!r} has no {variant} copy")
            try:
                sessions[spec.role] = ort.InferenceSession(
                    str(path / name), session_options(), providers=["CPUExecutionProvider"]
                )
            except Exception as e:  # missing or corrupt: ORT raises its own exception types
                raise BundleReadError(f"{path / name}: ONNX Runtime cannot load it ({e})") from e
        try:
            tokenizer = Tokenizer.from_file(str(path / manifest.tokenizer_file))
        except Exception as e:  # tokenizers raises a bare Exception
            raise BundleReadError(f"{path / manifest.tokenizer_file}: not a tokenizer ({e})") from e
        return cls(path, manifest, variant, sessions, tokenizer)

    @classmethod
    def load(cls, path: Path, *, variant: str = "fp32") -> OrtBundle:
        """The finished bundle in `path` (its `manifest.json`)."""
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise BundleReadError(f"{path}: no manifest.json (not a bundle version directory)")
        try:
            manifest = json_format.Parse(manifest_path.read_text(), bundle_pb2.BundleManifest())
        except json_format.ParseError as e:
            raise BundleReadError(f"{manifest_path}: not a valid manifest: {e}") from None
        if manifest.task not in TASK_NAMES:
            raise BundleReadError(f"{manifest_path}: manifest has no valid task")
        return cls.open(path, manifest, variant=variant)

    @property
    def task(self) -> str:
        return TASK_NAMES[self.manifest.task]

    def run(self, role: str, feeds: Arrays) -> Arrays:
        """Outputs of graph `role` by name."""
        session = self.sessions[role]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))

    def zero_state(self, batch: int) -> Arrays:
        """The initial state for `batch` sequences: each tensor `(num_layers, B, H)`."""
        return {
            spec.input: np.zeros(
                [batch if dim == "batch" else int(dim) for dim in spec.shape], dtype=np.float32
            )
            for spec in self.manifest.state
        }

    def next_state(self, outputs: Arrays) -> Arrays:
        """State inputs of the next step from a step's outputs (`h_out` -> `h`, ...)."""
        return {spec.input: outputs[spec.output] for spec in self.manifest.state}

    def encoder_state(self, outputs: Arrays) -> Arrays:
        """The decoder's first state from the encoder's outputs (`h_init` -> `h`, ...)."""
        return {spec.input: outputs[f"{spec.input}_init"] for spec in self.manifest.state}
