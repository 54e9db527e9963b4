"""Optimizers, learning-rate schedules, gradient clipping and early stopping for the loop.

| `--optimizer` | torch.optim | notes                                        |
|---------------|-------------|----------------------------------------------|
| adam          | Adam        | the default                                  |
| adamw         | AdamW       | decoupled `--weight-decay`                   |
| sgd           | SGD         | `--momentum` (0.9 by default), Nesterov off  |
| rmsprop       | RMSprop     | `--momentum` applies too                     |

`--schedule`: `none`, `cosine` (to 0 over the run, stepped every optimizer step), `plateau`
(halved when the monitored validation metric stops improving, stepped every epoch);
`--warmup-steps` ramps the rate up linearly first (before `cosine` or `none`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from trainer.config import TrainConfig

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("none", "cosine", "plateau")


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.optimizer`."""
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")


class Schedule:
    """Per-step warm-up and cosine decay, and per-epoch reduce-on-plateau."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        *,
        total_steps: int,
        mode: Literal["min", "max"],
    ) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = max(total_steps, 1)
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=cfg.plateau_factor, patience=0
            )
            if cfg.schedule == "plateau"
            else None
        )
        self.step_count = 0
        self._apply()

    def factor(self) -> float:
        """The multiplier of the base rate after `step_count` optimizer steps."""
        step, warmup = self.step_count, self.cfg.warmup_steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        if self.cfg.schedule == "cosine":
            progress = (step - warmup) / max(self.total_steps - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    def _apply(self) -> None:
        if self.plateau is not None and self.step_count >= self.cfg.warmup_steps:
            return  # the plateau scheduler owns the rate after warm-up
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * self.factor()

    def step(self) -> None:
        """After every optimizer step."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        plateau = self.plateau.state_dict() if self.plateau is not None else None
        return {"step_count": self.step_count, "plateau": plateau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a resumed run: the step count, and the plateau scheduler's memory."""
        self.step_count = state["step_count"]
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])
        self._apply()

    def epoch_end(self, metric: float) -> None:
        """After every validation, with the monitored metric."""
        if self.plateau is not None:
            self.plateau.step(metric)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def clip_gradients(model: nn.Module, cfg: TrainConfig) -> float:
    """Clip by value (if set) then by norm (if set); returns the global norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if cfg.clip_value > 0:
        torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
    max_norm = cfg.clip_norm if cfg.clip_norm > 0 else math.inf
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


@dataclass
class EarlyStopping:
    """Stop after `patience` validations without improvement of the monitored metric (0: off)."""

    patience: int
    mode: str  # "max" or "min"
    best: float | None = None
    bad_epochs: int = 0

    def improved(self, value: float) -> bool:
        """Record `value`; True when it is the best so far."""
        better = self.best is None or (
            value > self.best if self.mode == "max" else value < self.best
        )
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience
