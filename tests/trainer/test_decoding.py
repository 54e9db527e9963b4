"""Beam search for validation (the service's search stepping the PyTorch model): completions
ranked by log-probability, batched equals one by one."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from trainer.data.tokenizer import BOS_ID, EOS_ID
from trainer.decoding import complete, complete_batch
from trainer.models import LanguageModel, LanguageModelConfig


def lm() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(LanguageModelConfig(vocab_size=12, embed_dim=8, hidden_size=8)).eval()


def log_probability(model: LanguageModel, prefix: list[int], completion: list[int]) -> float:
    """log P(completion, [EOS] | [BOS] prefix), summed token by token."""
    tokens = torch.tensor([[BOS_ID, *prefix, *completion, EOS_ID]])
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1], model.init_hidden(1))
    logp = F.log_softmax(logits[0], dim=-1)  # (T, V)
    start = len(prefix)  # the position that predicts the completion's first token
    targets = tokens[0, start + 1 :]
    return float(logp[start:].gather(1, targets[:, None]).sum())


def test_completions_are_distinct_and_ranked_by_log_probability() -> None:
    model, prefix = lm(), [5, 7]
    found = complete(model, prefix, k=5, max_new=4)
    assert len(found) == 5 and len({tuple(c) for c in found}) == 5
    scores = [log_probability(model, prefix, c) for c in found]
    assert scores == sorted(scores, reverse=True)
    assert all(EOS_ID not in c for c in found)


def test_batched_search_equals_one_prefix_at_a_time() -> None:
    model = lm()
    prefixes = [[5], [6, 7, 8, 9], [4, 4], [11, 10, 9]]  # different lengths, one batch
    assert complete_batch(model, prefixes, k=4, max_new=5) == [
        complete(model, p, k=4, max_new=5) for p in prefixes
    ]
