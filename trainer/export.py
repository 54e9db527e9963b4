"""Export a trained checkpoint to an ONNX model bundle, refusing any graph that ONNX Runtime does
not reproduce to within the tolerance.

Exporter choice: the TorchScript-based exporter (`dynamo=False`). On torch 2.13 it writes
`nn.GRU` as one ONNX `GRU` op with `linear_before_reset=1`, keeps batch and time dynamic, and takes
well under a second per graph; the dynamo exporter took ~9 s per graph and annotated the time
axis of the output as static. The parity check below is what makes either choice safe;
`tests/trainer/test_exporter_choice.py` pins the reasons.

Every graph is also written as `<role>.opt.onnx`, ONNX Runtime's offline optimization of it
(`trainer.optimize`), checked against PyTorch like the graph itself; `quantize="int8"` adds
`<role>.int8.onnx`, accepted only when a validation metric drops by no more than asked
(`trainer.quantize`).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from protos.recur.v1 import bundle_pb2
from trainer import bundle
from trainer.checkpoint import MODELS, Checkpoint, weight_normalize
from trainer.graphs import GraphDef, graphs_for
from trainer.models import ClassifierConfig
from trainer.models.recurrent import remove_weight_norm, state_names
from trainer.optimize import OPTIMIZATION_LEVEL, optimize_graph

OPSET = 17
TOLERANCE = 1e-4
# (batch, length) pairs checked for every graph: batch 1 and 4, two or more lengths each.
PARITY_SHAPES = ((1, 1), (1, 9), (4, 3), (4, 12))
_TASKS = {
    "translation": bundle_pb2.TASK_TRANSLATION,
    "sentiment": bundle_pb2.TASK_SENTIMENT,
    "autocomplete": bundle_pb2.TASK_AUTOCOMPLETE,
}


class ExportError(RuntimeError):
    """The export was refused; no bundle was written."""


def rebuild_model(checkpoint: Checkpoint) -> nn.Module:
    """The trained model, from a checkpoint alone, in eval mode, with weight normalization (if
    it trained with it) folded into plain weights."""
    model_cls, _ = MODELS[checkpoint.task]
    model = model_cls(checkpoint.model_config)
    if checkpoint.config.weight_norm:
        weight_normalize(model)
    model.load_state_dict(checkpoint.weights)
    remove_weight_norm(model)
    return model.eval()


def export_graph(graph: GraphDef, path: Path) -> None:
    """Write `graph` to `path` with the TorchScript-based exporter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer notes; parity is checked below
        torch.onnx.export(
            graph.module,
            graph.example(2, 5),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_axes=graph.dynamic_axes(),
        )
    onnx.checker.check_model(str(path))


def check_parity(
    graph: GraphDef, path: Path, *, tolerance: float, label: str = ""
) -> bundle_pb2.ParityReport:
    """Compare ONNX Runtime with PyTorch on random inputs of every shape in `PARITY_SHAPES`.

    Args:
        graph: the graph's PyTorch wrapper and signature.
        path: the ONNX file to check (the exported graph or a copy of it).
        tolerance: the largest absolute difference accepted on any output.
        label: how the error names the graph (default: its role).

    Raises:
        ExportError: an output differs by more than `tolerance`.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    torch.manual_seed(0)
    for batch, length in PARITY_SHAPES:
        inputs = graph.example(batch, length)
        with torch.no_grad():
            expected = graph.module(*inputs)
        feeds = {name: t.numpy() for name, t in zip(graph.inputs, inputs, strict=True)}
        actual = session.run(list(graph.outputs), feeds)
        for name, want, got in zip(graph.outputs, expected, actual, strict=True):
            diff = float(np.max(np.abs(want.numpy() - got))) if got.size else 0.0
            if not diff <= tolerance:
                raise ExportError(
                    f"{label or graph.role}: output {name!r} differs from PyTorch by {diff:.3g} "
                    f"(tolerance {tolerance:g}) at batch {batch}, length {length}; "
                    "no bundle written"
                )
            worst = max(worst, diff)
    return bundle_pb2.ParityReport(
        max_abs_diff=worst,
        tolerance=tolerance,
        sequence_lengths=sorted({length for _, length in PARITY_SHAPES}),
        batch_sizes=sorted({batch for batch, _ in PARITY_SHAPES}),
    )


def _graph_spec(graph: GraphDef, report: bundle_pb2.ParityReport) -> bundle_pb2.GraphSpec:
    def tensors(specs: dict[str, list[str]]) -> list[bundle_pb2.TensorSpec]:
        return [
            bundle_pb2.TensorSpec(name=name, dtype=graph.dtype(name), shape=shape)
            for name, shape in specs.items()
        ]

    return bundle_pb2.GraphSpec(
        role=graph.role,
        file=f"{graph.role}.onnx",
        inputs=tensors(graph.inputs),
        outputs=tensors(graph.outputs),
        exporter="torchscript",
        opset=OPSET,
        parity=report,
    )


def export_verified(graph: GraphDef, directory: Path, *, tolerance: float) -> bundle_pb2.GraphSpec:
    """Export `graph` and its ORT-optimized copy into `directory`, both parity-checked."""
    path = directory / f"{graph.role}.onnx"
    export_graph(graph, path)
    spec = _graph_spec(graph, check_parity(graph, path, tolerance=tolerance))
    optimized = directory / f"{graph.role}.opt.onnx"
    optimize_graph(path, optimized, level=OPTIMIZATION_LEVEL)
    label = f"{graph.role} (optimized copy)"
    spec.optimized_parity.CopyFrom(check_parity(graph, optimized, tolerance=tolerance, label=label))
    spec.optimized_file = optimized.name
    spec.optimization_level = OPTIMIZATION_LEVEL
    return spec


def build_manifest(checkpoint: Checkpoint, name: str) -> bundle_pb2.BundleManifest:
    """Everything of the manifest but the graphs, hashes and version."""
    cfg = checkpoint.model_config
    classifier = cfg if isinstance(cfg, ClassifierConfig) else None
    manifest = bundle_pb2.BundleManifest(
        name=name,
        task=_TASKS[checkpoint.task],
        cell=cfg.cell,
        sizes=bundle_pb2.ModelSizes(
            vocab_size=cfg.vocab_size,
            embed_dim=cfg.embed_dim,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            bidirectional=checkpoint.task == "translation",
            num_classes=classifier.num_classes if classifier else 0,
        ),
        special_tokens=bundle_pb2.SpecialTokens(pad_id=0, unk_id=1, bos_id=2, eos_id=3),
        tokenizer_file="tokenizer.json",
        labels=checkpoint.labels,
        pooling=classifier.pooling if classifier else "",
        versions=bundle_pb2.ExportVersions(
            torch=torch.__version__, onnx=onnx.__version__, onnxruntime=ort.__version__
        ),
    )
    state_shape = [str(cfg.num_layers), "batch", str(cfg.hidden_size)]
    for name in state_names(cfg.cell):
        manifest.state.append(
            bundle_pb2.StateSpec(input=name, output=f"{name}_out", shape=state_shape)
        )
    training = manifest.training
    training.data = checkpoint.data.description
    training.train_examples = checkpoint.data.train_examples
    training.valid_examples = checkpoint.data.valid_examples
    training.epochs = checkpoint.position.epoch
    training.steps = checkpoint.position.steps
    training.workers = checkpoint.config.workers
    training.wall_seconds = checkpoint.wall_seconds
    training.metrics.update({k: float(v) for k, v in checkpoint.metrics.items()})
    training.config_json = json.dumps(
        {**dataclasses.asdict(checkpoint.config), "python": platform.python_version()},
        sort_keys=True,
    )
    return manifest


def quantize_or_refuse(
    staging: Path,
    manifest: bundle_pb2.BundleManifest,
    graphs: list[GraphDef],
    checkpoint: Checkpoint,
    *,
    max_quality_drop: float,
) -> None:
    """Add int8 copies of the staged graphs and their report, or refuse the whole bundle.

    Raises:
        ExportError: the validation metric drops by more than `max_quality_drop`.
    """
    from trainer.data.files import DataError
    from trainer.evaluate import checkpoint_examples
    from trainer.quantize import quantize_staged

    try:
        examples = checkpoint_examples(checkpoint)
    except (DataError, OSError) as e:
        raise ExportError(f"int8 quantization needs the run's validation data: {e}") from None
    report = quantize_staged(staging, manifest, graphs, examples, max_quality_drop=max_quality_drop)
    if not report.delta <= max_quality_drop:  # NaN refuses too
        better = "higher" if report.higher_is_better else "lower"
        raise ExportError(
            f"int8 quantization costs {report.delta:.4g} {report.metric} ({better} is better: "
            f"fp32 {report.fp32_value:.4g}, int8 {report.int8_value:.4g} on "
            f"{report.examples} validation examples), more than the tolerance "
            f"--max-quality-drop {max_quality_drop:g}; no bundle written"
        )
    manifest.quantization.CopyFrom(report)


def export_checkpoint(
    checkpoint: Checkpoint,
    *,
    out: Path,
    name: str,
    tolerance: float = TOLERANCE,
    quantize: str = "",
    max_quality_drop: float = 0.0,
    fit_decoding: bool = False,
) -> Path:
    """Export `checkpoint` to `out/name/<next version>/` and return that directory.

    An autocomplete bundle gets the popular-query index of its run's training log and ranking
    weights fit on its validation queries (`trainer.ranking`; `--popular-max-queries 0`: none).

    Args:
        checkpoint: a checkpoint written by the trainer.
        out: the model repository.
        name: the model's name (its directory under `out`).
        tolerance: the largest ONNX Runtime vs PyTorch difference accepted on any graph output.
        quantize: "int8" to add int8 dynamically quantized copies of the graphs; "" for none.
        max_quality_drop: with `quantize`, the largest accepted drop of the task's validation
            metric (`trainer.evaluate.HEADLINE`) from the fp32 graphs to the int8 graphs.
        fit_decoding: translation: fit the served beam width and length penalty on the run's
            validation pairs (`trainer.beam_defaults`, `--fit-decoding-pairs`) and record them.

    Raises:
        ExportError: a graph's ONNX Runtime outputs differ from PyTorch beyond `tolerance`, or
            quantization costs more than `max_quality_drop`. Nothing is written then.
    """
    if quantize not in ("", "int8"):
        raise ValueError(f"quantize must be '' or 'int8', got {quantize!r}")
    model = rebuild_model(checkpoint)
    manifest = build_manifest(checkpoint, name)
    staging = bundle.staging_dir(out, name)
    try:
        graphs = graphs_for(model)
        for graph in graphs:
            manifest.graphs.append(export_verified(graph, staging, tolerance=tolerance))
        (staging / "tokenizer.json").write_text(checkpoint.tokenizer)
        cfg = checkpoint.config
        if checkpoint.task == "autocomplete" and cfg.popular_max_queries:
            from trainer.ranking import add_popular_index

            add_popular_index(staging, manifest, cfg)
        if quantize:
            quantize_or_refuse(
                staging, manifest, graphs, checkpoint, max_quality_drop=max_quality_drop
            )
        if (  # after quantization, whose gate need not measure the defaults
            fit_decoding and checkpoint.task == "translation" and cfg.fit_decoding_pairs
        ):
            from trainer.beam_defaults import add_decoding_defaults

            add_decoding_defaults(staging, manifest, cfg)
        if checkpoint.history:
            from trainer import plots

            title = f"{checkpoint.task} ({checkpoint.model_config.cell})"
            plots.loss_curve(checkpoint.history, staging / "loss_curve.png", title=title)
        return bundle.finalize(staging, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
