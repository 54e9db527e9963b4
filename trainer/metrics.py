"""Validation metrics as pure functions of predictions and references (no torch, no model).

| task         | metrics                                                                        |
|--------------|--------------------------------------------------------------------------------|
| all          | loss in nats per target; `perplexity` = e^loss; `bits` = nats / ln 2          |
| sentiment    | `accuracy`, `macro_f1` (unweighted mean of per-class F1), `calibration_error`   |
| translation  | `bleu`: sacreBLEU corpus BLEU, 13a tokenization                                |
| autocomplete | `mean_reciprocal_rank` at k of completions; `MostPopularCompletion` baseline  |

The definitions match `trainer/evaluate.py` (metrics of an exported bundle), so a model's
validation numbers and its bundle's numbers can be compared.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import sacrebleu

Ids = tuple[int, ...]


def perplexity(nats_per_token: float) -> float:
    """e^loss; a model that spreads its mass evenly over V tokens has perplexity V."""
    return math.exp(nats_per_token)


def bits(nats: float) -> float:
    """Nats to bits (bits per character when `nats` is the loss per character)."""
    return nats / math.log(2)


def accuracy(labels: Sequence[Hashable], predictions: Sequence[Hashable]) -> float:
    """Share of predictions equal to their label (0 for no examples)."""
    hits = sum(y == p for y, p in zip(labels, predictions, strict=True))
    return hits / len(labels) if labels else 0.0


def calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], *, bins: int = 10
) -> float:
    """Expected calibration error: the |accuracy - mean confidence| of `bins` equal-width bins
    of the predicted class's probability, weighted by each bin's share of the predictions
    (Guo et al. 2017); 0 for no predictions."""
    if not confidences:
        return 0.0
    groups: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for p, ok in zip(confidences, correct, strict=True):
        groups[min(int(p * bins), bins - 1)].append((p, ok))
    return sum(abs(sum(ok for _, ok in g) - sum(p for p, _ in g)) for g in groups if g) / len(
        confidences
    )


def macro_f1(labels: Sequence[Hashable], predictions: Sequence[Hashable]) -> float:
    """Unweighted mean over the classes seen in `labels` or `predictions` of per-class F1.

    F1 of class c is 2·tp / (2·tp + fp + fn); a class no label and no prediction mentions does
    not count, so a model that always predicts one class of two scores at most 0.5·(F1 of it).
    """
    classes = set(labels) | set(predictions)
    if not classes:
        return 0.0
    pairs = list(zip(labels, predictions, strict=True))
    scores = []
    for c in classes:
        tp = sum(y == c and p == c for y, p in pairs)
        fp = sum(y != c and p == c for y, p in pairs)
        fn = sum(y == c and p != c for y, p in pairs)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU corpus BLEU (0-100) of detokenized `hypotheses` against one reference each,
    with the 13a tokenizer (sacreBLEU's default, the WMT standard)."""
    if not hypotheses:
        return 0.0
    score = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="13a")
    return float(score.score)


def normal_form(tokenizer: Any, text: str) -> str:
    """A BLEU reference as the model could write it: `text` normalized by the tokenizer (a model
    that lowercases cannot produce case it never saw), and, for a tokenizer without a decoder
    (word-level: its output is tokens joined by spaces), split into its words the same way.

    A tokenizer with a decoder (char, BPE) turns ids back into text, spaces included, so its
    reference is only normalized: splitting it with BPE's Metaspace pre-tokenizer would leave
    `▁` marks in the reference. (`trainer/evaluate.py` splits every reference.)
    """
    if tokenizer.normalizer is not None:
        text = tokenizer.normalizer.normalize_str(text)
    if tokenizer.decoder is None and tokenizer.pre_tokenizer is not None:
        text = " ".join(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text))
    return text


def reciprocal_rank(candidates: Sequence[Any], target: Any, *, k: int = 10) -> float:
    """1 / (1-based rank of `target` among the first `k` candidates), 0 when it is not there."""
    top = list(candidates[:k])
    return 1.0 / (top.index(target) + 1) if target in top else 0.0


def mean_reciprocal_rank(ranked: Iterable[tuple[Sequence[Any], Any]], *, k: int = 10) -> float:
    """MRR@k over `(candidates, target)` pairs (0 for none)."""
    ranks = [reciprocal_rank(candidates, target, k=k) for candidates, target in ranked]
    return sum(ranks) / len(ranks) if ranks else 0.0


def split_query(query: Ids) -> tuple[Ids, Ids]:
    """`(prefix, completion)`: the prefix is the first max(1, len // 2) tokens of the query
    (the trainer's validation; `recur-eval` cuts the query's text the same way,
    `trainer.ranking.split_text`); a one-token query asks for the empty completion."""
    cut = max(1, len(query) // 2)
    return query[:cut], query[cut:]


class MostPopularCompletion:
    """The classic query auto-completion baseline: for a prefix, the training queries that start
    with it, most frequent first (ties in lexicographic order); it can only suggest queries seen
    in training.

    Args:
        queries: training queries as token-id sequences (repeats are what it counts).
    """

    def __init__(self, queries: Iterable[Sequence[int]]) -> None:
        self.counts = Counter(tuple(q) for q in queries)
        self.keys = sorted(self.counts)  # a prefix's queries are one contiguous run of keys

    def complete(self, prefix: Sequence[int], *, k: int = 10) -> list[Ids]:
        """The completions (the tokens after `prefix`) of the `k` most frequent matches."""
        prefix = tuple(prefix)
        lo = bisect.bisect_left(self.keys, prefix)
        hi = bisect.bisect_left(self.keys, (*prefix, math.inf), lo)  # past every extension
        best = heapq.nsmallest(k, self.keys[lo:hi], key=lambda q: (-self.counts[q], q))
        return [q[len(prefix) :] for q in best]
