"""Elman vs Jordan vs LSTM vs GRU on one task, side by side: quality and gradient flow.

Trains every cell with the same data, sizes, optimizer and steps (in-process, no Ray) on SST-2
sentiment, reads each run's validation metrics and gradient-flow records, and writes
`<out>/cells.json` and `<out>/cells.png`: the validation curve per cell, and the last diagnosed
‖∂loss/∂h_t‖ against t, normalized to the last time step. The label is read after the last token
only (`--pooling last`), so the gradient at an early t is exactly what flows back through the
recurrence, and a cell whose gradient vanishes toward t = 0 stands out. (A language model has a
loss at every t, which hides the effect.)

    python scripts/compare_cells.py --out docs/cells
    python scripts/compare_cells.py --quick --out /tmp/cells
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "sst2"
CELLS = ("elman", "jordan", "lstm", "gru")


def train(cell: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One run of `cell`; its metrics history and gradient flow."""
    from trainer.cli import run
    from trainer.config import resolve

    flags = {
        "task": "sentiment", "data": "files", "train": str(args.data / "train.tsv"),
        "valid": str(args.data / "dev.tsv"), "cell": cell, "pooling": "last",
        "embed_dim": 64, "hidden_size": args.hidden, "batch_size": 64, "epochs": args.epochs,
        "max_train_examples": args.lines, "lr": 0.003, "clip_norm": 1.0,
        "diagnose_every": args.diagnose_every, "workers": 0, "seed": 0, "out": str(work / "models"),
        "run_dir": str(work / "runs"), "run_name": cell, "name": f"cells-{cell}",
        "log_every": 100,
    }  # fmt: skip
    started = time.perf_counter()
    run(resolve(flags, environ={}))
    record = json.loads((work / "runs" / cell / "metrics.json").read_text())
    record["seconds"] = time.perf_counter() - started
    return record


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for cell, record in results.items():
        history = record["history"]
        left.plot([m["epoch"] for m in history], [m["valid_loss"] for m in history],
                  marker="o", label=cell)  # fmt: skip
        flow = record["gradient_flow"][-1]["per_step"]
        right.plot(range(len(flow)), [v / flow[-1] for v in flow], label=cell)
    left.set(xlabel="epoch", ylabel="validation loss (nats)", title="quality")
    right.set(xlabel="time step t", ylabel="‖∂L/∂h_t‖ / ‖∂L/∂h_T‖", yscale="log",
              title="gradient flow (last diagnosed step)")  # fmt: skip
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for cell, record in results.items():
        last = record["history"][-1]
        flow = record["gradient_flow"][-1]["per_step"]
        rows.append({
            "cell": cell,
            "valid_loss": round(last["valid_loss"], 4),
            "valid_accuracy": round(last["valid_accuracy"], 4),
            "grad_ratio_first_to_last": flow[0] / flow[-1],
            "grad_norm_mean": round(last.get("grad_norm_mean", float("nan")), 4),
            "seconds": round(record["seconds"], 1),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the SST-2 folder")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "cells")
    parser.add_argument("--quick", action="store_true", help="fewer lines and one epoch")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lines", type=int, default=20000, help="training lines (0: all)")
    parser.add_argument("--diagnose-every", type=int, default=50)
    args = parser.parse_args(argv)
    if not (args.data / "train.tsv").is_file():
        print(f"compare_cells: --data {args.data} not found (the ../shared/data folder)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.quick:
        args.lines, args.epochs, args.diagnose_every = 3000, 1, 10
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    results = {cell: train(cell, args, work) for cell in args.cells.split(",")}
    rows = summary(results)
    settings = {k: str(v) for k, v in vars(args).items()}
    (args.out / "cells.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    plot(results, args.out / "cells.png")
    print(f"{'cell':<8} {'loss':>7} {'accuracy':>8} {'dL/dh_0 / dL/dh_T':>18} {'s':>6}")
    for row in rows:
        print(f"{row['cell']:<8} {row['valid_loss']:>7.4f} {row['valid_accuracy']:>8.4f} "
              f"{row['grad_ratio_first_to_last']:>18.3g} {row['seconds']:>6.0f}")  # fmt: skip
    print(f"wrote {args.out / 'cells.json'} and {args.out / 'cells.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
