"""PNG plots of a run: the loss curves and the gradient flow (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(history: list[dict[str, float]], path: Path, *, title: str) -> Path:
    """Training and validation loss per epoch (and the monitored metric on a second axis)."""
    plt = _pyplot()
    epochs = [m["epoch"] for m in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [m["train_loss"] for m in history], marker="o", label="train loss")
    ax.plot(epochs, [m["valid_loss"] for m in history], marker="o", label="valid loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gradient_flow(records: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """‖∂loss/∂h_t‖ against t (log scale), one line per diagnosed step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for record in records:
        values = record["per_step"]
        ax.plot(range(len(values)), values, label=f"step {record['step']}")
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("mean ‖∂loss/∂h_t‖")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if len(records) <= 12:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
