"""Why the export uses the TorchScript-based exporter (`dynamo=False`), pinned as tests.

PyTorch's GRU applies the reset gate after the hidden projection, which ONNX spells
`linear_before_reset=1`; the dynamo exporter has written GRUs with the wrong value (the known
bug), which changes every output. With torch 2.13 and onnxscript 0.7.2 it gets the attribute
right, but still fixes the output's time axis to the example's length and takes ~10x longer
(about 10-20 s against 1-2 s for a GRU step on this machine). The first test pins what the
TorchScript exporter gets right; the second is a canary that fails when dynamo catches up.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from trainer.export import export_graph
from trainer.graphs import GraphDef, step_graph
from trainer.models import LanguageModel, LanguageModelConfig


def gru_step() -> GraphDef:
    torch.manual_seed(0)
    cfg = LanguageModelConfig(vocab_size=20, embed_dim=8, hidden_size=8, num_layers=1, cell="gru")
    return step_graph("lm_step", LanguageModel(cfg).eval(), cfg.vocab_size)


def max_diff(graph: GraphDef, model: onnx.ModelProto, batch: int, length: int) -> float:
    """Largest |ORT - PyTorch| over the outputs at a shape other than the export example's."""
    inputs = graph.example(batch, length)
    with torch.no_grad():
        expected = graph.module(*inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(graph.inputs, inputs, strict=True)}
    got = session.run(list(graph.outputs), feeds)
    return max(float(np.abs(w.numpy() - g).max()) for w, g in zip(expected, got, strict=True))


def linear_before_reset(model: onnx.ModelProto) -> list[int]:
    return [
        attribute.i
        for node in model.graph.node
        if node.op_type == "GRU"
        for attribute in node.attribute
        if attribute.name == "linear_before_reset"
    ]


def time_axis(model: onnx.ModelProto) -> str | int:
    logits = next(o for o in model.graph.output if o.name == "logits")
    dim = logits.type.tensor_type.shape.dim[1]
    return dim.dim_param or dim.dim_value


def test_torchscript_exporter_writes_pytorch_gru_semantics(tmp_path: Path) -> None:
    """linear_before_reset=1 on the GRU op, a named (dynamic) time axis, parity at new shapes;
    and the attribute matters: flipping it (the dynamo bug) breaks parity."""
    graph = gru_step()
    export_graph(graph, tmp_path / "step.onnx")
    model = onnx.load(str(tmp_path / "step.onnx"))
    assert linear_before_reset(model) == [1]
    assert time_axis(model) == "time"
    assert max_diff(graph, model, batch=3, length=9) <= 1e-5
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "GRU" and attribute.name == "linear_before_reset":
                attribute.i = 0
    assert max_diff(graph, model, batch=3, length=9) > 1e-3


@pytest.mark.slow
def test_dynamo_exporter_still_loses_to_torchscript(tmp_path: Path) -> None:
    """Canary (slow: one dynamo export takes 10-20 s here): fails once dynamo exports a GRU step
    correctly, with a dynamic time axis, and within 5x the TorchScript exporter's time."""
    pytest.importorskip(
        "onnxscript",
        reason="the dynamo exporter needs onnxscript: `make test-slow` installs it (the "
        "`exporters` extra, pinned in constraints.txt); without it there is nothing to compare",
    )
    graph = gru_step()
    export_graph(graph, tmp_path / "warm-up.onnx")  # first-call set-up is not the exporter's cost
    start = time.perf_counter()
    export_graph(graph, tmp_path / "torchscript.onnx")
    torchscript_s = time.perf_counter() - start
    batch, length = torch.export.Dim("batch"), torch.export.Dim("time")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.module,
            graph.example(2, 5),
            str(tmp_path / "dynamo.onnx"),
            dynamo=True,
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_shapes=({0: batch, 1: length}, ({1: batch},)),
        )
    dynamo_s = time.perf_counter() - start
    model = onnx.load(str(tmp_path / "dynamo.onnx"))
    reasons = []
    if any(value != 1 for value in linear_before_reset(model)):
        reasons.append(f"GRU linear_before_reset={linear_before_reset(model)} (PyTorch's is 1)")
    if isinstance(time_axis(model), int):
        reasons.append(f"logits time axis fixed to {time_axis(model)}")
    try:
        if max_diff(graph, model, batch=1, length=1) > 1e-4:
            reasons.append("outputs differ from PyTorch at batch 1, length 1")
    except Exception as e:  # ORT refuses a shape the graph fixed
        reasons.append(f"ORT cannot run it at length 1 ({type(e).__name__})")
    if dynamo_s > 5 * torchscript_s:
        reasons.append(f"export took {dynamo_s:.1f} s against {torchscript_s:.2f} s")
    assert reasons, "dynamo now exports a GRU step as well: revisit the choice in trainer/export.py"
