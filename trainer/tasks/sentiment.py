"""Sentiment: a running classifier, trained on the label of the whole text (many-to-one)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

from trainer import metrics
from trainer.config import TrainConfig
from trainer.data.builtin import sentiment_reviews
from trainer.models import Classifier, ClassifierConfig
from trainer.tasks.base import (
    Batch,
    ModelDefaults,
    Task,
    TaskData,
    ids_or_unk,
    on_device,
    pad,
    unwrap,
)

MAX_TOKENS = 128
EVAL_BATCH = 256


class SentimentTask(Task):
    name = "sentiment"
    defaults = ModelDefaults(embed_dim=64, hidden_size=128, epochs=2)
    monitor = "valid_accuracy"
    mode = "max"
    default_tokenizer = "word"
    data_kind = "labelled"

    def labels(self) -> tuple[str, ...]:
        return ("negative", "positive")

    def load_builtin(self, cfg: TrainConfig) -> tuple[list[Any], list[Any], str]:
        split = sentiment_reviews(seed=cfg.seed)
        return split.train, split.valid, "builtin:sentiment"

    def texts(self, train: Iterable[Any]) -> Iterator[str]:
        return (text for text, _ in train)

    def encode_one(self, raw: Any, tokenizer: Tokenizer) -> Any:
        text, label = raw
        return ids_or_unk(tokenizer.encode(text).ids[:MAX_TOKENS]), label

    def collate(self, examples: Sequence[Any]) -> Batch:
        return {
            "tokens": pad([ids for ids, _ in examples]),
            "lengths": torch.tensor([len(ids) for ids, _ in examples]),
            "labels": torch.tensor([label for _, label in examples]),
        }

    def build_model(self, cfg: TrainConfig, vocab_size: int) -> nn.Module:
        return Classifier(
            ClassifierConfig(
                vocab_size=vocab_size,
                num_classes=len(self.labels()),
                embed_dim=cfg.embed_dim or self.defaults.embed_dim,
                hidden_size=cfg.hidden_size or self.defaults.hidden_size,
                num_layers=cfg.num_layers,
                dropout=cfg.dropout,
                cell=cfg.cell,
                pooling=cfg.pooling,
            )
        )

    def _final_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        tokens = batch["tokens"]
        state = unwrap(model).init_hidden(tokens.size(0), tokens.device)
        logits, _ = model(tokens, state)  # (B, T, C)
        return unwrap(model).pool(logits, batch["lengths"])  # (B, C): the whole text's label

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        logits = self._final_logits(model, batch)
        return F.cross_entropy(logits, batch["labels"]), int(batch["labels"].numel())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        nats, labels, predictions = 0.0, [], []
        for start in range(0, len(data.valid), EVAL_BATCH):
            batch = on_device(self.collate(data.valid[start : start + EVAL_BATCH]), model)
            logits = self._final_logits(model, batch)  # (B, C)
            nats += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            labels += batch["labels"].tolist()
            predictions += logits.argmax(1).tolist()
        return {
            "valid_loss": nats / max(len(labels), 1),
            "valid_accuracy": metrics.accuracy(labels, predictions),
            "valid_macro_f1": metrics.macro_f1(labels, predictions),
        }
