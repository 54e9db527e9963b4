"""Autocomplete: a character-level language model over a query log (next-character prediction).

Every query is one sequence `[BOS] q u e r y [EOS]`; the model learns where queries end, so a
completion stops at `[EOS]`. Queries are short, so full BPTT over each one is exact and cheap.
A running text (PTB, Tiny Shakespeare) is read as one stream with `--bptt`; its validation then
reads the validation text as one stream too, the state carried across lines (`tbptt.stream_loss`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

from trainer import metrics, tbptt
from trainer.config import TrainConfig
from trainer.data.builtin import search_queries
from trainer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, is_character_level
from trainer.decoding import complete_batch
from trainer.models import LanguageModel, LanguageModelConfig
from trainer.tasks.base import Batch, ModelDefaults, Task, TaskData, on_device, pad, unwrap

MAX_CHARS = 128
EVAL_BATCH = 256
EVAL_COMPLETIONS = 200  # validation queries completed for MRR@10 (--eval-completions)
COMPLETION_BATCH = 50  # queries searched together (50 x 10 beams a step)


class AutocompleteTask(Task):
    name = "autocomplete"
    defaults = ModelDefaults(embed_dim=32, hidden_size=192, epochs=2)
    monitor = "valid_bits_per_char"
    mode = "min"
    default_tokenizer = "char"
    data_kind = "text"

    def load_builtin(self, cfg: TrainConfig) -> tuple[list[Any], list[Any], str]:
        split = search_queries(seed=cfg.seed)
        return split.train, split.valid, "builtin:autocomplete"

    def texts(self, train: Iterable[Any]) -> Iterator[str]:
        return iter(train)

    def encode_one(self, raw: Any, tokenizer: Tokenizer) -> Any:
        return [BOS_ID, *tokenizer.encode(raw).ids[:MAX_CHARS], EOS_ID]

    def collate(self, examples: Sequence[Any]) -> Batch:
        sequences = pad(examples, value=PAD_ID)
        return {"inputs": sequences[:, :-1], "targets": sequences[:, 1:]}

    def validate(self, cfg: TrainConfig) -> None:
        embed = cfg.embed_dim or self.defaults.embed_dim
        hidden = cfg.hidden_size or self.defaults.hidden_size
        if cfg.tie_embeddings and embed != hidden:
            raise ValueError(
                f"--tie-embeddings needs --embed-dim equal to --hidden-size (got {embed} and "
                f"{hidden}; the defaults are {self.defaults.embed_dim} and "
                f"{self.defaults.hidden_size})"
            )

    def build_model(self, cfg: TrainConfig, vocab_size: int) -> nn.Module:
        return LanguageModel(
            LanguageModelConfig(
                vocab_size=vocab_size,
                embed_dim=cfg.embed_dim or self.defaults.embed_dim,
                hidden_size=cfg.hidden_size or self.defaults.hidden_size,
                num_layers=cfg.num_layers,
                dropout=cfg.dropout,
                cell=cfg.cell,
                tie_embeddings=cfg.tie_embeddings,
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
        """Loss per token, perplexity, bits per character, next-token accuracy; MRR@10 of the
        model's completions and of the MostPopularCompletion baseline on the same prefixes."""
        bptt = data.cfg.bptt if data.cfg is not None else 0
        if bptt:
            total, count, correct = tbptt.stream_loss(unwrap(model), self._stream(data), bptt=bptt)
        else:
            total, count, correct = self._lines_loss(model, data)
        nats = total / max(count, 1)
        result = {
            "valid_loss": nats,
            "valid_perplexity": metrics.perplexity(nats),
            "valid_bits_per_char": metrics.bits(nats * count / self._characters(data, count)),
            "valid_next_char_accuracy": correct / max(count, 1),
        }
        limit = data.cfg.eval_completions if data.cfg is not None else EVAL_COMPLETIONS
        if limit:
            result |= self._completions(model, data, limit)
        return result

    def _stream(self, data: TaskData) -> torch.Tensor:
        if "valid_stream" not in data.cache:
            data.cache["valid_stream"] = tbptt.token_stream(data.valid)
        stream: torch.Tensor = data.cache["valid_stream"]
        return stream

    def _lines_loss(self, model: nn.Module, data: TaskData) -> tuple[float, int, int]:
        """Summed nats, targets and correct predictions, each line read from a zero state."""
        total, count, correct = 0.0, 0, 0
        for start in range(0, len(data.valid), EVAL_BATCH):
            batch = on_device(self.collate(data.valid[start : start + EVAL_BATCH]), model)
            inputs, targets = batch["inputs"], batch["targets"]
            logits, _ = model(inputs, unwrap(model).init_hidden(inputs.size(0), inputs.device))
            nats, n, right = tbptt.tally(logits, targets)
            total, count, correct = total + nats, count + n, correct + right
        return total, count, correct

    def _characters(self, data: TaskData, targets: int) -> int:
        """Characters the validation targets spell (`[EOS]` counts as one): `targets` for a
        character-level tokenizer, else the length of every raw line plus one."""
        if is_character_level(data.tokenizer):
            return max(targets, 1)
        if "valid_chars" not in data.cache:
            data.cache["valid_chars"] = sum(len(q) + 1 for q in data.valid_raw)
        return max(int(data.cache["valid_chars"]), 1)

    def _completions(self, model: nn.Module, data: TaskData, limit: int) -> dict[str, float]:
        """MRR@10 of the first `limit` validation queries, each completed from its first half:
        overall, and on the prefixes that start no training query (where MostPopularCompletion
        has nothing to offer and only a model can complete)."""
        if "mpc" not in data.cache:  # one pass over the training queries, once per run
            data.cache["mpc"] = metrics.MostPopularCompletion(ids[1:-1] for ids in data.train)
        mpc: metrics.MostPopularCompletion = data.cache["mpc"]
        queries = [tuple(ids[1:-1]) for ids in data.valid[:limit]]  # without [BOS] and [EOS]
        split = [metrics.split_query(q) for q in queries]
        ours, baseline, unseen = [], [], []
        for start in range(0, len(split), COMPLETION_BATCH):
            chunk = split[start : start + COMPLETION_BATCH]
            found = complete_batch(model, [prefix for prefix, _ in chunk], k=10)
            for (prefix, target), completions in zip(chunk, found, strict=True):
                ours.append(([tuple(c) for c in completions], target))
                baseline.append((mpc.complete(prefix, k=10), target))
                unseen.append(not baseline[-1][0])
        new = [pair for pair, fresh in zip(ours, unseen, strict=True) if fresh]
        new_baseline = [pair for pair, fresh in zip(baseline, unseen, strict=True) if fresh]
        return {
            "valid_mrr_at_10": metrics.mean_reciprocal_rank(ours, k=10),
            "valid_mpc_mrr_at_10": metrics.mean_reciprocal_rank(baseline, k=10),
            "valid_unseen_prefix_share": len(new) / max(len(ours), 1),
            "valid_unseen_mrr_at_10": metrics.mean_reciprocal_rank(new, k=10),
            "valid_unseen_mpc_mrr_at_10": metrics.mean_reciprocal_rank(new_baseline, k=10),
        }
