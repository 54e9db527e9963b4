"""int8 copies of a staged bundle's graphs, and what they cost in quality, size and step time.

The quality is one validation metric per task (`trainer.evaluate.HEADLINE`: sentiment accuracy,
translation BLEU, autocomplete nats/token) computed by the serving engine on the fp32 graphs and
on the int8 graphs of the same staged bundle, on the split the checkpoint was validated on. The
export (`trainer.export`) refuses the bundle when the drop exceeds the tolerance it was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protos.recur.v1 import bundle_pb2
from services.bundle import TASK_NAMES
from services.offline import open_model
from trainer.evaluate import HEADLINE, evaluate
from trainer.graphs import GraphDef
from trainer.optimize import QUANT_OP_TYPES, QUANT_SCHEME, quantize_graph, step_latency

# The graph whose step time is compared: the one the service runs once per generated token.
STEP_ROLE = {
    "sentiment": "classifier_step",
    "translation": "decoder_step",
    "autocomplete": "lm_step",
}
LATENCY_ROUNDS = 3  # alternate fp32/int8 timings, keep each one's best median: less load noise
DECODER_SOURCE_LENGTH = 12  # source tokens attended over when timing `decoder_step`


def quantized_name(role: str) -> str:
    return f"{role}.int8.onnx"


def latency_ratio(staging: Path, spec: bundle_pb2.GraphSpec, graph: GraphDef) -> float:
    """Median batch-1 step time of the int8 graph over the fp32 graph's, one thread each."""
    length = DECODER_SOURCE_LENGTH if graph.role == "decoder_step" else 1
    inputs = graph.example(1, length)
    feeds = {name: t.numpy() for name, t in zip(graph.inputs, inputs, strict=True)}
    fp32, int8 = [], []
    for _ in range(LATENCY_ROUNDS):
        fp32.append(step_latency(staging / spec.file, feeds, repeats=100))
        int8.append(step_latency(staging / spec.quantized_file, feeds, repeats=100))
    return min(int8) / min(fp32)


def quantize_staged(
    staging: Path,
    manifest: bundle_pb2.BundleManifest,
    graphs: list[GraphDef],
    examples: list[Any],
    *,
    max_quality_drop: float,
) -> bundle_pb2.QuantizationReport:
    """Write `<role>.int8.onnx` next to every graph in `staging` and measure what it costs.

    Args:
        staging: the bundle directory being assembled (graphs and tokenizer written).
        manifest: its manifest; each graph's `quantized_file` is set here.
        graphs: the exported graphs' definitions (for the step-time inputs).
        examples: raw validation examples of the task.
        max_quality_drop: the tolerance, recorded in the report (the caller enforces it).
    """
    for spec in manifest.graphs:
        quantize_graph(staging / spec.file, staging / quantized_name(spec.role))
        spec.quantized_file = quantized_name(spec.role)
    task = TASK_NAMES[manifest.task]
    metric, higher_is_better = HEADLINE[task]
    values = {
        variant: evaluate(
            open_model(staging, graphs=variant, staged=manifest), examples, completions=False
        )
        for variant in ("fp32", "int8")
    }
    fp32, int8 = values["fp32"][metric], values["int8"][metric]
    sizes = {
        variant: sum((staging / getattr(spec, field)).stat().st_size for spec in manifest.graphs)
        for variant, field in (("fp32", "file"), ("int8", "quantized_file"))
    }
    role = STEP_ROLE[task]
    spec = next(s for s in manifest.graphs if s.role == role)
    graph = next(g for g in graphs if g.role == role)
    return bundle_pb2.QuantizationReport(
        scheme=QUANT_SCHEME,
        op_types=list(QUANT_OP_TYPES),
        size_ratio=sizes["int8"] / sizes["fp32"],
        step_role=role,
        step_latency_ratio=latency_ratio(staging, spec, graph),
        metric=metric,
        higher_is_better=higher_is_better,
        fp32_value=fp32,
        int8_value=int8,
        delta=fp32 - int8 if higher_is_better else int8 - fp32,
        max_quality_drop=max_quality_drop,
        examples=int(values["fp32"]["examples"]),
    )
