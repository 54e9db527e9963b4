"""Gradient-flow diagnostics: ∂loss/∂h_t per time step, warnings, and the run's PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.config import TrainConfig
from trainer.diagnostics import GradientFlow, gradient_flow, probe_examples
from trainer.models.recurrent import RecurrentStack
from trainer.tasks import get_task


def classifier_and_batch(cell: str) -> tuple[object, torch.nn.Module, dict[str, torch.Tensor]]:
    task = get_task("sentiment")
    cfg = TrainConfig(task="sentiment", cell=cell, hidden_size=16, embed_dim=8,
                      max_train_examples=300)  # fmt: skip
    data = task.prepare(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size())
    return task, model, task.collate(probe_examples(data.valid, 16))


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru", "jordan"])
def test_last_step_gradient_equals_the_direct_gradient(cell: str) -> None:
    """At the last step h_T only reaches the loss through the prediction, so ∂L/∂h_T is the
    gradient of the fused model's output there; earlier steps get gradient too."""
    task, model, batch = classifier_and_batch(cell)
    flow = gradient_flow(task, model, batch, step=1, grad_norm=1.0)  # type: ignore[arg-type]
    assert len(flow.per_step) == batch["tokens"].size(1)
    captured = []

    def keep(_module: object, _inputs: object, output: tuple[torch.Tensor, ...]) -> None:
        output[0].retain_grad()
        captured.append(output[0])

    handle = model.rnn.register_forward_hook(keep)
    loss, _ = task.loss(model, batch)  # type: ignore[attr-defined]
    loss.backward()
    handle.remove()
    direct = captured[0].grad[:, -1].norm(dim=1).mean().item()
    assert flow.per_step[-1] == pytest.approx(direct, rel=1e-4)
    assert all(v > 0 for v in flow.per_step)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_probe_leaves_the_model_as_it_was_weight_norm_included(cell: str) -> None:
    """The probe runs on the training model itself: its weights, gradients, mode and forward
    are as before, and a weight-normalized model, which cannot be deep-copied once it has run
    (`--weight-norm` with the default `--diagnose-every` crashed at step 100), is measured too."""
    from trainer.checkpoint import weight_normalize

    task, model, batch = classifier_and_batch(cell)
    weight_normalize(model)
    loss, _ = task.loss(model, batch)  # type: ignore[attr-defined]
    loss.backward()  # a training step's gradients, waiting for the optimizer
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.eval()
    flow = gradient_flow(task, model, batch, step=1, grad_norm=1.0)  # type: ignore[arg-type]
    assert len(flow.per_step) == batch["tokens"].size(1)
    assert all(v > 0 and v == v for v in flow.per_step)
    assert not model.training
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert grads and all(torch.equal(p.grad, grads[k]) for k, p in model.named_parameters()
                         if p.grad is not None)  # fmt: skip
    stack = next(m for m in model.modules() if isinstance(m, RecurrentStack))
    assert "forward" not in vars(stack)  # its own forward again


def test_probe_examples_share_one_length() -> None:
    examples = [([1] * n, 0) for n in (3, 5, 5, 5, 7, 7)]
    assert probe_examples(examples, limit=2) == [([1] * 7, 0)] * 2
    assert probe_examples(examples, limit=3) == [([1] * 5, 0)] * 3


@pytest.mark.parametrize(
    ("flow", "expected", "reason"),
    [
        (GradientFlow(5, 1.0, [1e-9, 1e-3, 1.0]), "vanishing gradients", "h_0 gets 1e-9 of h_T"),
        (GradientFlow(5, 1e4, [1.0, 1.0]), "exploding gradients (global norm 1e+04)", "huge norm"),
        (GradientFlow(5, float("nan"), [1.0]), "exploding gradients", "a NaN norm"),
        (GradientFlow(5, 2.0, [0.5, 1.0]), None, "healthy"),
    ],
)
def test_warnings(flow: GradientFlow, expected: str | None, reason: str) -> None:
    warning = flow.warning()
    assert (warning is None) if expected is None else (expected in (warning or "")), reason


def test_run_writes_metrics_and_plots(tmp_path: Path) -> None:
    from trainer.cli import run

    cfg = TrainConfig(
        task="autocomplete", cell="elman", workers=0, epochs=2, diagnose_every=5,
        max_train_examples=400, hidden_size=16, embed_dim=8, log_every=1000,
        out=str(tmp_path / "m"), run_dir=str(tmp_path / "r"), run_name="x",
    )  # fmt: skip
    bundle = run(cfg)
    run_dir = tmp_path / "r" / "x"
    record = json.loads((run_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in record["history"]] == [1.0, 2.0]
    assert [f["step"] for f in record["gradient_flow"]] == [5, 10]
    for name in ("loss_curve.png", "gradient_flow.png"):
        assert (run_dir / name).read_bytes().startswith(b"\x89PNG")
    assert bundle is not None and (bundle / "loss_curve.png").is_file()
