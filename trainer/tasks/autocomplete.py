"""Autocomplete: a character-level language model over a query log (next-character prediction).

Every query is one sequence `[BOS] q u e r y [EOS]`; the model learns where queries end, so a
completion stops at `[EOS]`. Queries are short, so full BPTT over each one is exact and cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

from trainer.config import TrainConfig
from trainer.data.builtin import search_queries
from trainer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, char_tokenizer
from trainer.models import LanguageModel, LanguageModelConfig
from trainer.tasks.base import Batch, ModelDefaults, Task, TaskData, pad, unwrap

MAX_CHARS = 128


class AutocompleteTask(Task):
    name = "autocomplete"
    defaults = ModelDefaults(embed_dim=32, hidden_size=192, epochs=2)
    monitor = "valid_bits_per_char"
    mode = "min"
    data_kind = "text"

    def load_builtin(self, cfg: TrainConfig) -> tuple[list[Any], list[Any], str]:
        split = search_queries(seed=cfg.seed)
        return split.train, split.valid, "builtin:autocomplete"

    def build_tokenizer(self, train: Iterable[Any]) -> Tokenizer:
        return char_tokenizer(train)

    def encode_one(self, raw: Any, tokenizer: Tokenizer) -> Any:
        return [BOS_ID, *tokenizer.encode(raw).ids[:MAX_CHARS], EOS_ID]

    def collate(self, examples: list[Any]) -> Batch:
        sequences = pad(examples, value=PAD_ID)
        return {"inputs": sequences[:, :-1], "targets": sequences[:, 1:]}

    def build_model(self, cfg: TrainConfig, vocab_size: int) -> nn.Module:
        return LanguageModel(
            LanguageModelConfig(
                vocab_size=vocab_size,
                embed_dim=cfg.embed_dim or self.defaults.embed_dim,
                hidden_size=cfg.hidden_size or self.defaults.hidden_size,
                num_layers=cfg.num_layers,
                dropout=cfg.dropout,
                cell=cfg.cell,
            )
        )

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        inputs, targets = batch["inputs"], batch["targets"]
        state = unwrap(model).init_hidden(inputs.size(0), inputs.device)
        logits, _ = model(inputs, state)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)
        return loss, int((targets != PAD_ID).sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        total, count, correct = 0.0, 0, 0
        for start in range(0, len(data.valid), 256):
            batch = self.collate(data.valid[start : start + 256])
            loss, n = self.loss(model, batch)
            total += loss.item() * n
            count += n
            logits, _ = model(batch["inputs"], model.init_hidden(batch["inputs"].size(0)))
            mask = batch["targets"] != PAD_ID
            correct += int(((logits.argmax(2) == batch["targets"]) & mask).sum())
        nats = total / max(count, 1)
        return {
            "valid_loss": nats,
            "valid_perplexity": math.exp(nats),
            "valid_bits_per_char": nats / math.log(2),
            "valid_next_char_accuracy": correct / max(count, 1),
        }
