"""Top-k completions of a prefix by beam search through a bundle's `lm_step` graph, and MRR@k.

A completion is the token ids that follow the prefix up to (not including) `[EOS]`; completions
are ranked by their total log-probability (the probability of the whole query given the prefix),
which is how a query autocompleter ranks its suggestions. The search keeps `k` open beams and
stops once `k` finished completions all score above every open beam (log-probabilities only
fall as a beam grows, so no open beam can overtake them).
"""

from __future__ import annotations

import numpy as np

from trainer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from trainer.metrics import mean_reciprocal_rank, split_query
from trainer.ort_bundle import OrtBundle

MAX_NEW_TOKENS = 64  # longer than any held-out query's second half in the built-in corpus


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def complete(
    model: OrtBundle, prefix: list[int], *, k: int = 10, max_new: int = MAX_NEW_TOKENS
) -> list[list[int]]:
    """Up to `k` most likely completions of `prefix` (ids without `[BOS]`), best first."""
    return [beam for _, beam in complete_scored(model, prefix, k=k, max_new=max_new)]


def complete_scored(
    model: OrtBundle, prefix: list[int], *, k: int = 10, max_new: int = MAX_NEW_TOKENS
) -> list[tuple[float, list[int]]]:
    """`complete` with each completion's log-probability (its `[EOS]` included)."""
    tokens = np.array([[BOS_ID, *prefix]], dtype=np.int64)  # (1, T)
    out = model.run("lm_step", {"tokens": tokens, **model.zero_state(1)})
    state = model.next_state(out)
    logp = log_softmax(out["logits"][:, -1])  # (beams, V)
    beams: list[list[int]] = [[]]
    scores = np.zeros(1)  # (beams,)
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_new):
        total = scores[:, None] + logp  # (beams, V)
        finished += [(float(s), beam) for s, beam in zip(total[:, EOS_ID], beams, strict=True)]
        finished = sorted(finished, key=lambda f: -f[0])[:k]
        total[:, [EOS_ID, PAD_ID, BOS_ID]] = -np.inf  # special tokens never continue a beam
        flat = np.argsort(-total, axis=None)[:k]
        rows, cols = np.unravel_index(flat, total.shape)
        if len(finished) == k and finished[-1][0] >= total[rows[0], cols[0]]:
            break
        beams = [[*beams[r], int(c)] for r, c in zip(rows, cols, strict=True)]
        scores = total[rows, cols]
        feeds = {name: s[:, rows] for name, s in state.items()}  # (L, beams, H)
        out = model.run("lm_step", {"tokens": cols.astype(np.int64)[:, None], **feeds})
        state = model.next_state(out)
        logp = log_softmax(out["logits"][:, -1])
    return finished


def score_completions(
    model: OrtBundle, prefix: list[int], completions: list[list[int]]
) -> list[float]:
    """The log-probability of each completion and its `[EOS]` after `[BOS] + prefix`, read in
    one batched call from the prefix's state (teacher forcing)."""
    if not completions:
        return []
    out = model.run("lm_step", {"tokens": np.array([[BOS_ID, *prefix]], dtype=np.int64),
                                **model.zero_state(1)})  # fmt: skip
    first = log_softmax(out["logits"][0, -1])  # (V,)
    rows = [[*c, EOS_ID] for c in completions]
    width = max(len(r) for r in rows)
    targets = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        targets[i, : len(row)] = row
    state = {name: np.repeat(s, len(rows), axis=1) for name, s in model.next_state(out).items()}
    later = model.run("lm_step", {"tokens": targets[:, :-1], **state}) if width > 1 else None
    scores = []
    for i, row in enumerate(rows):
        total = float(first[row[0]])
        if later is not None and len(row) > 1:
            logp = log_softmax(later["logits"][i, : len(row) - 1])  # (len - 1, V)
            total += float(logp[np.arange(len(row) - 1), row[1:]].sum())
        scores.append(total)
    return scores


def mrr_at_k(model: OrtBundle, queries: list[list[int]], *, k: int = 10) -> float:
    """MRR@k over `queries` (ids without `[BOS]`/`[EOS]`): each query's own ending among the
    top-`k` completions of its prefix (`metrics.split_query`: its first `max(1, len // 2)` tokens;
    a one-token query asks for the empty completion)."""
    ranked = []
    for query in queries:
        prefix, target = split_query(tuple(query))
        candidates = [tuple(c) for c in complete(model, list(prefix), k=k)]
        ranked.append((candidates, target))
    return mean_reciprocal_rank(ranked, k=k)
