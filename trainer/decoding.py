"""Beam search in PyTorch for validation: top-k query completions and beam translation.

`complete` is the PyTorch twin of `trainer/completions.py` (which searches through a bundle's
ONNX graph): the same ranking by total log-probability and the same stopping rule, so MRR@10
during training and `recur-eval` on the exported bundle measure the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from trainer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from trainer.models.seq2seq import Seq2Seq, source_mask

MAX_NEW_TOKENS = 64
_NEVER_CONTINUE = [EOS_ID, PAD_ID, BOS_ID]  # special tokens do not extend a beam


def _top(total: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `k` best (score, beam row, token) over `total: (beams, V)`."""
    scores, flat = total.flatten().topk(min(k, total.numel()))
    return scores, flat // total.size(1), flat % total.size(1)


def _prefix_states(
    model: Any, prefixes: Sequence[Sequence[int]], device: torch.device
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The state after `[BOS] + prefix` of every prefix `(L, Q, H)...`, and the next-token
    log-probabilities `(Q, V)` (one forward per prefix: their lengths differ)."""
    states, logps = [], []
    for prefix in prefixes:
        tokens = torch.tensor([[BOS_ID, *prefix]], device=device)  # (1, T)
        logits, state = model(tokens, model.init_hidden(1, device))
        states.append(state)
        logps.append(F.log_softmax(logits[:, -1], dim=-1))  # (1, V)
    stacked = tuple(torch.cat([s[i] for s in states], dim=1) for i in range(len(states[0])))
    return stacked, torch.cat(logps)


@torch.no_grad()
def complete_batch(
    model: Any, prefixes: Sequence[Sequence[int]], *, k: int = 10,
    max_new: int = MAX_NEW_TOKENS,
) -> list[list[list[int]]]:  # fmt: skip
    """`complete` for many prefixes at once: every query's beams advance in one batched step.

    A query whose search has stopped is still carried along (its rows are computed and
    ignored), so each query's result is exactly what `complete` alone would return.
    """
    device = next(model.parameters()).device
    state, logp = _prefix_states(model, prefixes, device)
    q_count, width = len(prefixes), 1  # beams per query: 1 until the first expansion
    beams: list[list[list[int]]] = [[[]] for _ in prefixes]
    scores = torch.zeros(q_count, 1, device=device)  # (Q, width)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in prefixes]
    active = [True] * q_count
    for _ in range(max_new):
        total = scores[:, :, None] + logp.view(q_count, width, -1)  # (Q, width, V)
        ends = total[:, :, EOS_ID].tolist()
        for q in (q for q in range(q_count) if active[q]):
            done = finished[q] + list(zip(ends[q], beams[q], strict=True))
            finished[q] = sorted(done, key=lambda f: -f[0])[:k]
        total[:, :, _NEVER_CONTINUE] = float("-inf")
        scores, flat = total.flatten(1).topk(min(k, total[0].numel()), dim=1)  # (Q, k)
        rows, cols = flat // total.size(2), flat % total.size(2)
        for q in range(q_count):
            if len(finished[q]) == k and finished[q][-1][0] >= float(scores[q, 0]):
                active[q] = False
        if not any(active):
            break
        beams = [[[*beams[q][r], c] for r, c in zip(rows[q].tolist(), cols[q].tolist(),
                                                    strict=True)]
                 for q in range(q_count)]  # fmt: skip
        index = (torch.arange(q_count, device=device)[:, None] * width + rows).flatten()
        state = tuple(s[:, index] for s in state)  # (L, Q * k, H)
        logits, state = model(cols.flatten()[:, None], state)
        logp, width = F.log_softmax(logits[:, -1], dim=-1), scores.size(1)
    return [[beam for _, beam in done] for done in finished]


def complete(
    model: Any, prefix: Sequence[int], *, k: int = 10, max_new: int = MAX_NEW_TOKENS
) -> list[list[int]]:
    """Up to `k` most likely completions of `prefix` (ids without `[BOS]`), best first.

    A completion is the ids after the prefix up to (not including) `[EOS]`, scored by its total
    log-probability. The search stops once `k` finished completions all score at least as high
    as the best open beam (log-probabilities only fall as a beam grows).
    """
    return complete_batch(model, [prefix], k=k, max_new=max_new)[0]


@torch.no_grad()
def beam_translate(model: Seq2Seq, src: Sequence[int], *, beam: int, max_len: int) -> list[int]:
    """The best translation of one source by beam search (ids without `[BOS]`/`[EOS]`).

    Each step keeps the `beam` best continuations; one that ends in `[EOS]` is finished. Finished
    hypotheses are ranked by log-probability per token (`[EOS]` included) so that short outputs
    are not favoured. The search ends when `beam` hypotheses have finished, or at `max_len`,
    where the open beams count as finished.
    """
    device = next(model.parameters()).device
    src_t = torch.tensor([list(src)], device=device)  # (1, S)
    src_len = torch.tensor([len(src)], device=device)
    memory, state = model.encoder(src_t, src_len)  # (1, S, 2H)
    mask = source_mask(src_t, src_len)  # (1, S)
    beams: list[list[int]] = [[]]
    scores = torch.zeros(1, device=device)
    prev = torch.full((1, 1), BOS_ID, device=device)
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_len):
        n = len(beams)
        logits, state, _ = model.decoder(
            prev, state, memory.expand(n, -1, -1), mask.expand(n, -1)
        )  # (n, 1, V)
        total = scores[:, None] + F.log_softmax(logits[:, -1], dim=-1)  # (n, V)
        total[:, [PAD_ID, BOS_ID]] = float("-inf")
        top, rows, cols = _top(total, beam)
        ends = cols == EOS_ID
        finished += [
            (float(s) / (len(beams[r]) + 1), beams[r])
            for s, r in zip(top[ends].tolist(), rows[ends].tolist(), strict=True)
        ]
        if len(finished) >= beam or bool(ends.all()):
            break
        top, rows, cols = top[~ends], rows[~ends], cols[~ends]
        beams = [[*beams[r], c] for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
        scores, prev = top, cols[:, None]
        state = tuple(s[:, rows] for s in state)  # (L, n, H)
    else:
        finished += [(float(s) / max(len(b), 1), b) for s, b in zip(scores, beams, strict=True)]
    return max(finished, key=lambda f: f[0])[1]
