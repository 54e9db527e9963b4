"""Optimizers, schedules, clipping, weight normalization and early stopping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.models.recurrent import RecurrentStack, apply_weight_norm, remove_weight_norm
from trainer.optim import OPTIMIZERS, EarlyStopping, Schedule, build_optimizer, clip_gradients


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_a_quadratic(name: str) -> None:
    weight = nn.Parameter(torch.tensor([3.0, -2.0]))
    optimizer = build_optimizer([weight], TrainConfig(optimizer=name, lr=0.05))
    for _ in range(50):
        optimizer.zero_grad()
        (weight**2).sum().backward()
        optimizer.step()
    assert (weight**2).sum().item() < 13.0 * 0.5, name


@pytest.mark.parametrize(
    ("schedule", "warmup", "expected", "reason"),
    [
        ("none", 0, [1.0, 1.0, 1.0, 1.0], "constant"),
        ("none", 2, [0.5, 1.0, 1.0, 1.0], "linear warm-up then constant"),
        ("cosine", 0, [1.0, 0.854, 0.5, 0.146], "cosine to zero over 4 steps"),
        ("cosine", 2, [0.5, 1.0, 1.0, 0.5], "warm-up then cosine"),
    ],
)
def test_schedule_rates(schedule: str, warmup: int, expected: list[float], reason: str) -> None:
    weight = nn.Parameter(torch.zeros(1))
    cfg = TrainConfig(lr=1.0, schedule=schedule, warmup_steps=warmup)
    optimizer = build_optimizer([weight], cfg)
    sched = Schedule(optimizer, cfg, total_steps=4, mode="min")
    rates = []
    for _ in range(4):
        rates.append(sched.lr)
        sched.step()
    assert rates == pytest.approx(expected, abs=1e-3), reason


def test_plateau_halves_the_rate_when_the_metric_stalls() -> None:
    weight = nn.Parameter(torch.zeros(1))
    cfg = TrainConfig(lr=1.0, schedule="plateau")
    sched = Schedule(build_optimizer([weight], cfg), cfg, total_steps=10, mode="max")
    for metric in (0.5, 0.6):
        sched.epoch_end(metric)
    assert sched.lr == 1.0
    sched.epoch_end(0.55)  # no improvement
    assert sched.lr == 0.5


def test_clipping_by_value_then_norm() -> None:
    weight = nn.Parameter(torch.zeros(2))
    weight.grad = torch.tensor([30.0, -40.0])
    norm = clip_gradients(nn.ParameterList([weight]), TrainConfig(clip_value=10.0, clip_norm=1.0))
    assert norm == pytest.approx(math.hypot(10, 10))  # the norm after value clipping, before norm
    assert weight.grad.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert weight.grad[0] == -weight.grad[1]


@pytest.mark.parametrize("cell", ["gru", "lstm", "elman", "jordan"])
def test_weight_norm_trains_and_folds_back(cell: str) -> None:
    torch.manual_seed(0)
    stack = RecurrentStack(cell, 4, 8, num_layers=2)
    apply_weight_norm(stack)
    names = [n for n, _ in stack.named_parameters()]
    assert any("parametrizations" in n and n.endswith("original0") for n in names), names
    x = torch.randn(3, 5, 4)
    out, _ = stack(x, stack.init_hidden(3))
    out.sum().backward()
    assert all(p.grad is not None for p in stack.parameters())
    remove_weight_norm(stack)
    assert not any("parametrizations" in n for n, _ in stack.named_parameters())
    folded, _ = stack(x, stack.init_hidden(3))
    assert torch.allclose(out, folded, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "values", "stops_after", "reason"),
    [
        ("max", [0.5, 0.6, 0.6, 0.59], 4, "two validations without a better accuracy"),
        ("min", [3.0, 2.0, 1.0, 0.5], None, "loss keeps improving"),
    ],
)
def test_early_stopping(mode: str, values: list[float], stops_after: int | None,
                        reason: str) -> None:  # fmt: skip
    stopping = EarlyStopping(patience=2, mode=mode)
    stopped = None
    for epoch, value in enumerate(values, 1):
        stopping.improved(value)
        if stopping.should_stop:
            stopped = epoch
            break
    assert stopped == stops_after, reason
