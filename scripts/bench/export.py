"""Scenario 7, export: ONNX Runtime vs PyTorch eager step time per cell, `scripts/bench_export.py`.

The existing benchmark, run in-process: per cell (quick: GRU only), `lm_step` (and in the full
run `decoder_step`) at batch 1, 8 and 64, one thread each, alternating rounds, medians. Its
target: ONNX Runtime at least 2x faster than PyTorch at batch 1, for every cell and graph.
"""

from __future__ import annotations

import argparse
from typing import Any

from scripts.bench.common import Context, Result, Target


def run(ctx: Context) -> Result:
    from scripts import bench_export

    args = argparse.Namespace(
        quick=ctx.quick,
        cells=["gru"] if ctx.quick else list(bench_export.CELLS),
        repeats=100 if ctx.quick else 300,
        warmup=20 if ctx.quick else 50,
    )
    report = bench_export.measure(args)
    lowest = report["summary"]["min_speedup_at_batch_1"]
    threshold = bench_export.TARGET_SPEEDUP_AT_BATCH_1
    worst = min((r for r in report["results"] if r["batch"] == 1), key=lambda r: r["speedup"])
    target = Target(
        "ORT / PyTorch eager step speed at batch 1 (lowest cell and graph)",
        f">= {threshold:g}x", lowest, threshold,
        detail=f"lowest: {worst['cell']} {worst['graph']} (torch {worst['torch_us']:.0f} µs, "
        f"ORT {worst['ort_us']:.0f} µs)",
    )  # fmt: skip
    return Result(
        scenario="export",
        title="Export: ONNX Runtime vs PyTorch eager step time per cell",
        settings=report["settings"],
        rows=report["results"],
        targets=[target],
    )


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    return table(
        data["rows"],
        [("cell", "cell"), ("graph", "graph"), ("batch", "batch"), ("torch_us", "PyTorch µs"),
         ("ort_us", "ORT µs"), ("ort_optimized_us", "ORT optimized µs"),
         ("speedup", "PyTorch / ORT"), ("speedup_optimized", "PyTorch / ORT optimized")],
    )  # fmt: skip


def plot(data: dict[str, Any], plt: Any) -> Any:
    from scripts import bench_export

    return bench_export.draw(data["rows"], plt)
