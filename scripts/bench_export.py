"""Benchmark one exported step against PyTorch eager: ONNX Runtime vs torch, per cell and batch.

    python scripts/bench_export.py [--quick] [--out bench-results]

For each cell (gru, lstm, elman, jordan) it builds the serving-sized model (autocomplete's
`lm_step`: embed 32, hidden 192, one layer; translation's `decoder_step`: embed 64, hidden 128,
attending over 12 source tokens), exports the step graph the way a bundle does (TorchScript
exporter, plus the ORT-optimized copy), and times one step (T=1) at batch 1, 8 and 64:

- fairness: PyTorch runs with `torch.set_num_threads(1)` under `torch.inference_mode()`, ONNX
  Runtime with `intra_op_num_threads=1`, `inter_op_num_threads=1`, on the same inputs, built
  once outside the timed call (ORT's time includes copying the outputs into numpy arrays);
- warm-up runs first, then the two runtimes alternate in rounds (so load from other processes
  hits both alike) and each time is the median over all timed repetitions.

Prints a table of medians and ratios (torch / ORT: above 1 means ORT is faster) and writes
`<out>/export.json` (with the CPU model, cores and library versions) and `<out>/export.png`.
The target is ORT at least 2x faster than PyTorch at batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CELLS = ("gru", "lstm", "elman", "jordan")
BATCHES = (1, 8, 64)
TARGET_SPEEDUP_AT_BATCH_1 = 2.0
SOURCE_LENGTH = 12


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import torch

    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def side_by_side(
    runs: dict[str, Callable[[], object]], *, repeats: int, warmup: int, rounds: int = 5
) -> dict[str, float]:
    """Median seconds of each callable, warmed up, timed in alternating rounds."""
    for fn in runs.values():
        timed(fn, warmup)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            samples[name] += timed(fn, max(1, repeats // rounds))
    return {name: statistics.median(s) for name, s in samples.items()}


def graphs(cell: str) -> list[Any]:
    """The `lm_step` and `decoder_step` graphs of serving-sized models of `cell`."""
    import torch

    from trainer.graphs import graphs_for
    from trainer.models import LanguageModel, LanguageModelConfig, Seq2Seq, Seq2SeqConfig

    torch.manual_seed(0)
    lm = LanguageModel(LanguageModelConfig(vocab_size=64, embed_dim=32, hidden_size=192, cell=cell))
    s2s = Seq2Seq(Seq2SeqConfig(vocab_size=400, embed_dim=64, hidden_size=128, cell=cell))
    return [*graphs_for(lm.eval()), graphs_for(s2s.eval())[1]]


def bench_graph(graph: Any, batch: int, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Time one step of `graph` at `batch` in PyTorch, ORT and ORT on the optimized copy."""
    import onnxruntime as ort
    import torch

    from trainer.export import export_graph
    from trainer.optimize import optimize_graph, session_options

    path, optimized = folder / f"{graph.role}.onnx", folder / f"{graph.role}.opt.onnx"
    if not path.exists():
        export_graph(graph, path)
        optimize_graph(path, optimized)
    inputs = graph.example(batch, SOURCE_LENGTH if graph.role == "decoder_step" else 1)
    feeds = {name: t.numpy() for name, t in zip(graph.inputs, inputs, strict=True)}
    sessions = {
        name: ort.InferenceSession(str(p), session_options(), providers=["CPUExecutionProvider"])
        for name, p in (("ort", path), ("ort_optimized", optimized))
    }

    def torch_step() -> object:
        with torch.inference_mode():
            return graph.module(*inputs)

    medians = side_by_side(
        {
            "torch": torch_step,
            **{name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()},
        },
        repeats=args.repeats,
        warmup=args.warmup,
    )
    return {
        "graph": graph.role,
        "batch": batch,
        **{f"{name}_us": seconds * 1e6 for name, seconds in medians.items()},
        "speedup": medians["torch"] / medians["ort"],
        "speedup_optimized": medians["torch"] / medians["ort_optimized"],
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    results = []
    roles = ("lm_step",) if args.quick else ("lm_step", "decoder_step")
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells:
            folder = Path(tmp) / cell
            folder.mkdir()
            for graph in (g for g in graphs(cell) if g.role in roles):
                for batch in BATCHES:
                    row = {"cell": cell, **bench_graph(graph, batch, folder, args)}
                    results.append(row)
                    print(format_row(row), flush=True)
    return results


def format_row(row: dict[str, Any]) -> str:
    return (
        f"{row['cell']:<7} {row['graph']:<13} {row['batch']:>5} {row['torch_us']:>10.1f} "
        f"{row['ort_us']:>10.1f} {row['ort_optimized_us']:>10.1f} {row['speedup']:>8.2f}x "
        f"{row['speedup_optimized']:>8.2f}x"
    )


HEADER = (
    f"{'cell':<7} {'graph':<13} {'batch':>5} {'torch_us':>10} {'ort_us':>10} {'ort_opt_us':>10} "
    f"{'speedup':>9} {'spd_opt':>9}"
)


def draw(results: list[dict[str, Any]], plt: Any) -> Any:
    """Grouped bars of the speedup per cell, one group per (graph, batch); the figure."""
    groups = sorted({(r["graph"], r["batch"]) for r in results})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / len({r["cell"] for r in results})
    cells = list(dict.fromkeys(r["cell"] for r in results))
    for i, cell in enumerate(cells):
        rows = {(r["graph"], r["batch"]): r["speedup"] for r in results if r["cell"] == cell}
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [rows.get(key, 0.0) for key in groups], width, label=cell)
    ax.axhline(TARGET_SPEEDUP_AT_BATCH_1, color="k", linestyle="--", label="2x target (batch 1)")
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{role}\nbatch {batch}" for role, batch in groups])
    ax.set_ylabel("PyTorch time / ONNX Runtime time")
    ax.set_title("One step, one thread: ONNX Runtime speedup over PyTorch eager")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(results, plt)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; the report: machine, settings, summary (the target) and results."""
    print(HEADER)
    results = run(args)
    batch_1 = [r for r in results if r["batch"] == 1]
    met = all(r["speedup"] >= TARGET_SPEEDUP_AT_BATCH_1 for r in batch_1)
    summary = {
        "target": f"ONNX Runtime >= {TARGET_SPEEDUP_AT_BATCH_1:g}x faster than PyTorch at batch 1",
        "target_met": met,
        "min_speedup_at_batch_1": min(r["speedup"] for r in batch_1),
    }
    settings = {"torch_threads": 1, "ort_intra_op_threads": 1, "ort_inter_op_threads": 1}
    settings |= {"repeats": args.repeats, "warmup": args.warmup, "quick": args.quick}
    settings |= {"cells": args.cells, "batches": list(BATCHES)}
    return {"machine": machine(), "settings": settings, "summary": summary, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="lm_step only, fewer repetitions")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    parser.add_argument(
        "--repeats", type=int, default=0, help="timed runs (default 1000, quick 100)"
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed runs (default 100, quick 20)"
    )
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (100 if args.quick else 1000)
    args.warmup = args.warmup or (20 if args.quick else 100)
    report = measure(args)
    summary, results = report["summary"], report["results"]
    met = summary["target_met"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / "export.png")
    print(
        f"{summary['target']}: {'met' if met else 'NOT met'} "
        f"(lowest {summary['min_speedup_at_batch_1']:.2f}x); wrote {args.out}/export.json, .png"
    )


if __name__ == "__main__":
    main()
