"""Beam search for validation on the PyTorch model: top-k query completions and beam translation.

The search is the service's own (`services.decoding.BeamSearch`); this module only steps the
PyTorch model for the live beams, as the engine steps the exported graphs. So `valid_mrr_at_10`
and `valid_bleu_beam` during training mean what recur-eval and recur-serve mean on the bundle:
completions ranked by total log-probability (with `[EOS]`), the search stopping once `k` ended
ones all score at least as high as the best live beam.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from services.decoding import BeamSearch, log_softmax
from trainer.data.tokenizer import BOS_ID, EOS_ID
from trainer.models.seq2seq import Seq2Seq, source_mask

MAX_NEW_TOKENS = 64


def _logprobs(logits: torch.Tensor) -> np.ndarray:
    """`(rows, V)` log-probabilities in float64, as the engine hands them to the search."""
    return log_softmax(logits.double().cpu().numpy())


@torch.no_grad()
def complete_batch(
    model: Any, prefixes: Sequence[Sequence[int]], *, k: int = 10,
    max_new: int = MAX_NEW_TOKENS,
) -> list[list[list[int]]]:  # fmt: skip
    """`complete` for many prefixes at once: the live beams of every search advance in one
    batched step (each search is exactly what it would be alone)."""
    device = next(model.parameters()).device
    states, logits = [], []
    for prefix in prefixes:  # one forward per prefix: their lengths differ
        out, state = model(torch.tensor([[BOS_ID, *prefix]], device=device),
                           model.init_hidden(1, device))  # fmt: skip
        states.append(state)
        logits.append(out[:, -1])  # (1, V)
    state = tuple(torch.cat([s[i] for s in states], dim=1) for i in range(len(states[0])))
    logp = _logprobs(torch.cat(logits))  # (rows, V): row r is a live beam of some search
    searches = [BeamSearch(size=k, eos_id=EOS_ID, max_len=max_new) for _ in prefixes]
    rows = [[q] for q in range(len(prefixes))]  # each search's live beams' rows
    while True:
        index: list[int] = []
        tokens: list[int] = []
        for search, mine in zip(searches, rows, strict=True):
            if search.done or not mine:
                mine.clear()
                continue
            parents = search.advance(logp[mine])
            picked = [mine[p] for p in parents] if not search.done else []
            mine[:] = range(len(index), len(index) + len(picked))
            index += picked
            tokens += [h.tokens[-1] for h in search.live] if picked else []
        if not index:
            break
        state = tuple(s[:, index] for s in state)  # (L, rows, H)
        out, state = model(torch.tensor(tokens, device=device)[:, None], state)
        logp = _logprobs(out[:, -1])
    return [[list(h.tokens) for h in search.ranked()] for search in searches]


def complete(
    model: Any, prefix: Sequence[int], *, k: int = 10, max_new: int = MAX_NEW_TOKENS
) -> list[list[int]]:
    """Up to `k` most likely completions of `prefix` (ids without `[BOS]`), best first: the ids
    after the prefix up to (not including) `[EOS]`."""
    return complete_batch(model, [prefix], k=k, max_new=max_new)[0]


@torch.no_grad()
def beam_translate(
    model: Seq2Seq, src: Sequence[int], *, beam: int, max_len: int, alpha: float = 0.0
) -> list[int]:
    """The best translation of one source by the service's beam search of width `beam` and
    length penalty `alpha` (ids without `[BOS]`/`[EOS]`)."""
    device = next(model.parameters()).device
    src_t = torch.tensor([list(src)], device=device)  # (1, S)
    src_len = torch.tensor([len(src)], device=device)
    memory, state = model.encoder(src_t, src_len)  # (1, S, 2H)
    mask = source_mask(src_t, src_len)  # (1, S)
    search = BeamSearch(size=beam, eos_id=EOS_ID, max_len=max_len, alpha=alpha)
    prev = torch.full((1, 1), BOS_ID, device=device)
    while True:
        n = len(prev)
        logits, state, _ = model.decoder(
            prev, state, memory.expand(n, -1, -1), mask.expand(n, -1)
        )  # (n, 1, V)
        parents = search.advance(_logprobs(logits[:, -1]))
        if search.done:
            return list(search.ranked()[0].tokens)
        state = tuple(s[:, parents] for s in state)  # (L, live, H)
        prev = torch.tensor([[h.tokens[-1]] for h in search.live], device=device)
