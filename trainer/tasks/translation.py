"""Translation: sequence to sequence with attention over a joint source/target vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

from trainer.config import TrainConfig
from trainer.data.builtin import translation_pairs
from trainer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, word_tokenizer
from trainer.models import Seq2Seq, Seq2SeqConfig
from trainer.models.seq2seq import greedy_decode
from trainer.tasks.base import Batch, ModelDefaults, Task, TaskData, ids_or_unk, pad, unwrap

MAX_TOKENS = 100


class TranslationTask(Task):
    name = "translation"
    defaults = ModelDefaults(embed_dim=64, hidden_size=128, epochs=5)
    monitor = "valid_exact_match"
    mode = "max"
    data_kind = "pairs"

    def load_builtin(self, cfg: TrainConfig) -> tuple[list[Any], list[Any], str]:
        split = translation_pairs(seed=cfg.seed)
        return split.train, split.valid, "builtin:translation (english->french)"

    def build_tokenizer(self, train: Iterable[Any]) -> Tokenizer:
        return word_tokenizer(text for pair in train for text in pair)

    def encode_one(self, raw: Any, tokenizer: Tokenizer) -> Any:
        src, tgt = raw
        return (
            ids_or_unk(tokenizer.encode(src).ids[:MAX_TOKENS]),
            ids_or_unk(tokenizer.encode(tgt).ids[:MAX_TOKENS]),
        )

    def collate(self, examples: list[Any]) -> Batch:
        return {
            "src": pad([s for s, _ in examples]),
            "src_len": torch.tensor([len(s) for s, _ in examples]),
            "prev": pad([[BOS_ID, *t] for _, t in examples]),  # teacher forcing inputs
            "targets": pad([[*t, EOS_ID] for _, t in examples]),
        }

    def build_model(self, cfg: TrainConfig, vocab_size: int) -> nn.Module:
        return Seq2Seq(
            Seq2SeqConfig(
                vocab_size=vocab_size,
                embed_dim=cfg.embed_dim or self.defaults.embed_dim,
                hidden_size=cfg.hidden_size or self.defaults.hidden_size,
                num_layers=cfg.num_layers,
                dropout=cfg.dropout,
                cell=cfg.cell,
            )
        )

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        logits = model(batch["src"], batch["src_len"], batch["prev"])  # (B, T, V)
        targets = batch["targets"]
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)
        return loss, int((targets != PAD_ID).sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        total, count, exact = 0.0, 0, 0
        for start in range(0, len(data.valid), 256):
            chunk = data.valid[start : start + 256]
            batch = self.collate(chunk)
            loss, n = self.loss(model, batch)
            total += loss.item() * n
            count += n
            hypotheses = greedy_decode(
                unwrap(model),
                batch["src"],
                batch["src_len"],
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                max_len=2 * batch["src"].size(1) + 10,
            )
            exact += sum(h == tgt for h, (_, tgt) in zip(hypotheses, chunk, strict=True))
        return {"valid_loss": total / max(count, 1), "valid_exact_match": exact / len(data.valid)}
