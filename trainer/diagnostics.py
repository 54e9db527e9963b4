"""Gradient-flow diagnostics: how much of the loss's gradient reaches each time step.

Every `--diagnose-every` optimizer steps, the loop runs one extra forward/backward pass on a fixed
validation batch and records, for each time step t, the mean over the batch of ‖∂loss/∂h_t‖
where h_t is the top recurrent layer's state after step t (for translation: the encoder's
forward direction, so the curve shows how far back into the source the gradient travels). Elman
networks show the vanishing gradient as a curve that falls steeply toward t = 0; LSTM and GRU
stay flatter.

The pass runs on a copy of the model, so it never touches DistributedDataParallel's gradient
hooks and costs the other ranks nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.models.recurrent import RecurrentStack
from trainer.tasks import Task
from trainer.tasks.base import Batch

VANISHING_RATIO = 1e-3  # ‖∂L/∂h_0‖ / ‖∂L/∂h_T‖ below this: warn of vanishing gradients
EXPLODING_NORM = 1e3  # a global gradient norm above this (before clipping): warn of explosion


@dataclass(frozen=True)
class GradientFlow:
    step: int
    grad_norm: float  # the training step's global gradient norm before clipping
    per_step: list[float]  # mean ‖∂loss/∂h_t‖ for t = 0 … T-1

    def warning(self) -> str | None:
        """A message when the gradients vanish or explode, else None."""
        if not math.isfinite(self.grad_norm) or self.grad_norm > EXPLODING_NORM:
            return f"step {self.step}: exploding gradients (global norm {self.grad_norm:.3g})"
        first, last = self.per_step[0], max(self.per_step[-1], 1e-30)
        if len(self.per_step) > 1 and first / last < VANISHING_RATIO:
            return (
                f"step {self.step}: vanishing gradients (‖∂L/∂h_0‖ / ‖∂L/∂h_T‖ = "
                f"{first / last:.2e} over {len(self.per_step)} steps)"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "grad_norm": self.grad_norm, "per_step": self.per_step}


def probe_examples(examples: list[Any], limit: int) -> list[Any]:
    """Up to `limit` examples of one common input length (the longest length with the most
    examples), so every position of the probe batch is a real token and t lines up across it."""
    by_length: dict[int, list[Any]] = {}
    for example in examples:
        tokens = example[0] if isinstance(example, tuple) else example
        by_length.setdefault(len(tokens), []).append(example)
    length = max(by_length, key=lambda n: (min(len(by_length[n]), limit), n))
    return by_length[length][:limit]


def _first_stack(model: nn.Module) -> RecurrentStack:
    return next(m for m in model.modules() if isinstance(m, RecurrentStack))


def _unroll(stack: RecurrentStack, captured: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Make `stack` step one token at a time, keeping every step's output and state (until
    `del stack.forward` gives it its own forward back).

    A fused RNN keeps h_t inside its kernel; stepping it token by token exposes h_t twice: as the
    step's output (the path to this step's prediction) and as the state handed to step t+1 (the
    path through every later step). ∂loss/∂h_t is the sum of the two gradients.
    """
    step = stack.forward

    def forward(x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> Any:
        outputs = []
        for t in range(x.size(1)):
            out, state = step(x[:, t : t + 1], state)
            captured.append((out, state[0]))
            outputs.append(out)
        return torch.cat(outputs, 1), state

    stack.forward = forward  # type: ignore[method-assign]


def gradient_flow(task: Task, model: nn.Module, batch: Batch, *, step: int,
                  grad_norm: float) -> GradientFlow:  # fmt: skip
    """Measure ‖∂loss/∂h_t‖ for every t of `batch` on `model` (unwrapped), in training mode.

    The gradients are taken with `torch.autograd.grad`, so the model's weights and its `.grad`
    are left as they were: no copy of the model is needed (a weight-normalized RNN cannot be
    deep-copied once it has run a forward pass: its flat weights are computed tensors).
    """
    stack = _first_stack(model)
    training = model.training
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    _unroll(stack, captured)
    try:
        model.train()
        loss, _ = task.loss(model, batch)
        tensors = [tensor for pair in captured for tensor in pair]
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    finally:
        del stack.forward  # the class's own forward again
        model.train(training)
    per_step = []
    for t, (out, _) in enumerate(captured):  # out: (B, 1, H); state: (L, B, H), top layer h_t
        grad = torch.zeros_like(out[:, 0])
        out_grad, state_grad = grads[2 * t], grads[2 * t + 1]
        if out_grad is not None:
            grad += out_grad[:, 0]
        if state_grad is not None:
            grad += state_grad[-1]
        per_step.append(float(grad.norm(dim=1).mean()))
    return GradientFlow(step=step, grad_norm=grad_norm, per_step=per_step)
