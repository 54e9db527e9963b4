"""What every task provides to the training loop and the exporter."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from trainer.config import TrainConfig
from trainer.data.tokenizer import PAD_ID

Batch = dict[str, torch.Tensor]


@dataclass
class TaskData:
    """A task's encoded examples and the tokenizer that encoded them."""

    tokenizer: Tokenizer
    train: list[Any]
    valid: list[Any]
    description: str  # where the data came from, for the manifest
    labels: tuple[str, ...] = ()
    valid_raw: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class ModelDefaults:
    embed_dim: int
    hidden_size: int
    epochs: int


class Task(ABC):
    """One of Recur's tasks: its data, model, loss and validation metrics."""

    name: str
    defaults: ModelDefaults
    monitor: str  # the validation metric that picks the best checkpoint and early-stops
    mode: str  # "max" or "min": which direction of `monitor` is better

    @abstractmethod
    def load_raw(self, cfg: TrainConfig) -> tuple[list[Any], list[Any], str]:
        """Raw (train, valid, description) examples, from the built-in corpus or files."""

    @abstractmethod
    def build_tokenizer(self, train: list[Any]) -> Tokenizer: ...

    @abstractmethod
    def encode(self, raw: list[Any], tokenizer: Tokenizer) -> list[Any]: ...

    @abstractmethod
    def collate(self, examples: list[Any]) -> Batch: ...

    @abstractmethod
    def build_model(self, cfg: TrainConfig, vocab_size: int) -> nn.Module: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch's targets, and the number of targets."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        """Validation metrics of `model` (unwrapped, in eval mode) on `data.valid`."""

    def labels(self) -> tuple[str, ...]:
        return ()

    def prepare(self, cfg: TrainConfig, tokenizer_json: str | None = None) -> TaskData:
        """Load, tokenize and encode; reuse `tokenizer_json` so every worker encodes alike."""
        train_raw, valid_raw, description = self.load_raw(cfg)
        if cfg.max_train_examples:
            train_raw = train_raw[: cfg.max_train_examples]
        if tokenizer_json is None:
            tokenizer = self.build_tokenizer(train_raw)
        else:
            tokenizer = Tokenizer.from_str(tokenizer_json)
        return TaskData(
            tokenizer=tokenizer,
            train=self.encode(train_raw, tokenizer),
            valid=self.encode(valid_raw, tokenizer),
            description=description,
            labels=self.labels(),
            valid_raw=valid_raw,
        )


def hold_out(items: list[Any], *, seed: int, fraction: float = 0.05) -> tuple[list[Any], list[Any]]:
    """Split `items` into (train, valid) with a seeded shuffle; valid gets `fraction` of them."""
    items = list(items)
    random.Random(seed).shuffle(items)
    n_valid = max(1, int(len(items) * fraction))
    return items[n_valid:], items[:n_valid]


def pad(sequences: list[list[int]], *, value: int = PAD_ID) -> torch.Tensor:
    """Right-pad integer sequences into a `(B, max_len)` int64 tensor."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def unwrap(model: nn.Module) -> Any:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)
