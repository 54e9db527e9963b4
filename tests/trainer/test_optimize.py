"""The ORT-optimized copy of every graph: what it holds, that it matches, that services take it."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from services.bundle import verify
from tests.conftest import untrained_checkpoint
from trainer.export import export_checkpoint, rebuild_model
from trainer.graphs import graphs_for
from trainer.optimize import optimize_graph


def op_counts(path: Path) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_service_verification_accepts_a_bundle_with_optimized_copies(tmp_path: Path) -> None:
    """The copies are hashed in the manifest, so the service's sha256 check passes."""
    bundle = export_checkpoint(untrained_checkpoint("autocomplete"), out=tmp_path, name="ac")
    manifest = verify(bundle).manifest
    assert [g.optimized_file for g in manifest.graphs] == ["lm_step.opt.onnx"]
    assert "lm_step.opt.onnx" in manifest.sha256


def test_optimized_decoder_step_fuses_for_the_cpu_provider(tmp_path: Path) -> None:
    """ORT_ENABLE_EXTENDED fuses the attention's transpose into a com.microsoft FusedMatMul and
    folds every Constant node, and the fused graph still answers like the original."""
    bundle = export_checkpoint(untrained_checkpoint("translation"), out=tmp_path, name="t")
    before, after = (
        op_counts(bundle / "decoder_step.onnx"),
        op_counts(bundle / "decoder_step.opt.onnx"),
    )
    assert after["FusedMatMul"] == 1 and before["FusedMatMul"] == 0
    assert before["Constant"] > 0 and after["Constant"] == 0
    decoder = next(
        g
        for g in graphs_for(rebuild_model(untrained_checkpoint("translation")))
        if g.role == "decoder_step"
    )
    feeds = {n: t.numpy() for n, t in zip(decoder.inputs, decoder.example(3, 6), strict=True)}
    runs = [
        ort.InferenceSession(str(bundle / f), providers=["CPUExecutionProvider"]).run(None, feeds)
        for f in ("decoder_step.onnx", "decoder_step.opt.onnx")
    ]
    for original, optimized in zip(*runs, strict=True):
        assert np.abs(original - optimized).max() <= 1e-5


@pytest.mark.parametrize(
    ("task", "role"),
    [("sentiment", "classifier_step"), ("translation", "encoder"), ("autocomplete", "lm_step")],
)
def test_enable_all_would_write_the_same_graph(tmp_path: Path, task: str, role: str) -> None:
    """Why not ORT_ENABLE_ALL: its extra passes (NCHWc layouts) change nothing in our graphs,
    yet ONNX Runtime warns that a model saved at that level is bound to the optimizing machine."""
    bundle = export_checkpoint(untrained_checkpoint(task, "lstm"), out=tmp_path, name=task)
    optimize_graph(bundle / f"{role}.onnx", tmp_path / "all.onnx", level="ORT_ENABLE_ALL")
    assert op_counts(tmp_path / "all.onnx") == op_counts(bundle / f"{role}.opt.onnx")
