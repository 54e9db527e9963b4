"""Translation: sequence to sequence with attention over a joint source/target vocabulary."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

from trainer import metrics
from trainer.config import TrainConfig
from trainer.data.builtin import translation_pairs
from trainer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from trainer.decoding import beam_translate
from trainer.models import Seq2Seq, Seq2SeqConfig
from trainer.models.seq2seq import greedy_decode
from trainer.progress import Ticker
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

MAX_TOKENS = 100
EVAL_BATCH = 256


class TranslationTask(Task):
    name = "translation"
    defaults = ModelDefaults(embed_dim=64, hidden_size=128, epochs=5)
    monitor = "valid_bleu"  # greedy; exact match is too rare on real data to rank epochs
    mode = "max"
    default_tokenizer = "word"
    data_kind = "pairs"

    def load_builtin(self, cfg: TrainConfig) -> tuple[list[Any], list[Any], str]:
        split = translation_pairs(seed=cfg.seed)
        return split.train, split.valid, "builtin:translation (english->french)"

    def texts(self, train: Iterable[Any]) -> Iterator[str]:
        return (text for pair in train for text in pair)  # one joint vocabulary

    def encode_one(self, raw: Any, tokenizer: Tokenizer) -> Any:
        src, tgt = raw
        return (
            ids_or_unk(tokenizer.encode(src).ids[:MAX_TOKENS]),
            ids_or_unk(tokenizer.encode(tgt).ids[:MAX_TOKENS]),
        )

    def collate(self, examples: Sequence[Any]) -> Batch:
        return {
            "src": pad([s for s, _ in examples]),
            "src_len": torch.tensor([len(s) for s, _ in examples]),
            "prev": pad([[BOS_ID, *t] for _, t in examples]),  # teacher forcing inputs
            "targets": pad([[*t, EOS_ID] for _, t in examples]),
        }

    def length(self, example: Any) -> int:
        src, tgt = example
        return len(src) + len(tgt) + 1  # the source, and the target with [BOS] or [EOS]

    def build_model(self, cfg: TrainConfig, vocab_size: int) -> nn.Module:
        return Seq2Seq(
            Seq2SeqConfig(
                vocab_size=vocab_size,
                embed_dim=cfg.embed_dim or self.defaults.embed_dim,
                hidden_size=cfg.hidden_size or self.defaults.hidden_size,
                num_layers=cfg.num_layers,
                dropout=cfg.dropout,
                cell=cfg.cell,
                attention=cfg.attention,
                input_feeding=cfg.input_feeding,
            )
        )

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        real = batch["targets"] != PAD_ID  # (B, T)
        logits = model(batch["src"], batch["src_len"], batch["prev"], real)  # (N, V)
        targets = batch["targets"][real]  # (N,)
        return F.cross_entropy(logits, targets), targets.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        """Loss and perplexity (teacher forcing); exact match and BLEU of greedy translations;
        with `--beam-size` > 1 also BLEU of beam translations."""
        total, count, exact = 0.0, 0, 0
        hypotheses: list[str] = []
        for start in range(0, len(data.valid), EVAL_BATCH):
            chunk = data.valid[start : start + EVAL_BATCH]
            batch = on_device(self.collate(chunk), model)
            loss, n = self.loss(model, batch)
            total += loss.item() * n
            count += n
            outputs = greedy_decode(
                unwrap(model), batch["src"], batch["src_len"], bos_id=BOS_ID, eos_id=EOS_ID,
                max_len=2 * batch["src"].size(1) + 10,
            )  # fmt: skip
            exact += sum(h == tgt for h, (_, tgt) in zip(outputs, chunk, strict=True))
            hypotheses += [data.tokenizer.decode(ids) for ids in outputs]
        references = [metrics.normal_form(data.tokenizer, tgt) for _, tgt in data.valid_raw]
        nats = total / max(count, 1)
        result = {
            "valid_loss": nats,
            "valid_perplexity": metrics.perplexity(nats),
            "valid_exact_match": exact / max(len(data.valid), 1),
            "valid_bleu": metrics.bleu(hypotheses, references),
        }
        beam = data.cfg.beam_size if data.cfg is not None else 0
        if beam > 1:  # one sentence at a time: minutes for a few thousand, so it says how far
            ticker, beamed = Ticker(f"[{self.name}] beam {beam}", unit="sentences"), []
            for src, _ in data.valid:
                ids = beam_translate(unwrap(model), src, beam=beam, max_len=2 * len(src) + 10)
                beamed.append(data.tokenizer.decode(ids))
                ticker(len(beamed), len(data.valid))
            result["valid_bleu_beam"] = metrics.bleu(beamed, references)
        return result
