"""ONNX Runtime passes over exported graphs: an offline-optimized copy and int8 quantization.

Optimization level: `ORT_ENABLE_EXTENDED`. Measured on torch 2.13 / onnxruntime 1.32 (AMD EPYC,
one thread, batch 1, `lm_step` with hidden 192, `decoder_step` with hidden 128): BASIC only folds
constants; EXTENDED adds the CPU provider's fusions (`FusedMatMul`, `FusedGemm`, `Split` for
sliced weights), e.g. GRU `lm_step` 52 -> 43 us, the rest within noise; ALL wrote the same nodes
for every graph of ours (its extra passes are NCHWc layout rewrites for convolutions) but ONNX
Runtime warns that a model saved at ALL may only run on the machine that optimized it. EXTENDED is
therefore the highest level whose saved graph is portable across CPUs; its contrib ops tie it to
the CPU execution provider, which is what the service runs.

Quantization: `quantize_dynamic` with int8 weights. The graph is constant-folded first (ORT at
BASIC), so every LSTM weight is a plain initializer and becomes a `DynamicQuantizeLSTM`; GRU and
Elman (`RNN`) ops have no quantized kernel, so for them only `MatMul`/`Gemm` (output projections,
attention, Jordan layers inside their `Loop`) and the embedding `Gather` are quantized.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

OPTIMIZATION_LEVEL = "ORT_ENABLE_EXTENDED"
QUANT_SCHEME = "int8-dynamic"
QUANT_OP_TYPES = ("MatMul", "Gemm", "Gather", "LSTM")


def session_options(*, level: str = "ORT_ENABLE_ALL", threads: int = 1) -> ort.SessionOptions:
    """Options for a CPU session with `threads` intra-op threads and one inter-op thread."""
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no notes about the saved model
    return options


def optimize_graph(src: Path, dst: Path, *, level: str = OPTIMIZATION_LEVEL) -> None:
    """Write ONNX Runtime's `level` optimization of the graph at `src` to `dst` (CPU provider)."""
    options = session_options(level=level)
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def quantize_graph(src: Path, dst: Path) -> None:
    """Write an int8 dynamically quantized copy of the graph at `src` to `dst`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        optimize_graph(src, folded, level="ORT_ENABLE_BASIC")
        quant_log = logging.getLogger()  # quantize_dynamic warns on the root logger
        level = quant_log.level
        quant_log.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                str(folded),
                str(dst),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANT_OP_TYPES),
            )
        finally:
            quant_log.setLevel(level)


def step_latency(
    path: Path, feeds: dict[str, np.ndarray], *, repeats: int = 200, warmup: int = 20
) -> float:
    """Median seconds of one `run` of the graph at `path` on `feeds`, one thread."""
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
