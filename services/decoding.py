"""Choosing tokens from logits: greedy, sampling and beam search. Pure numpy, no model calls.

The engine owns the model steps; these classes only decide which token (or which beams) come
next, so they are tested against brute force on tiny tables of log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def greedy(logits: np.ndarray) -> tuple[int, float]:
    """`logits: (V,)` -> (the most probable token, its log-probability), without building the
    whole log-softmax: log p(argmax) = -log sum(exp(logits - max))."""
    token = int(logits.argmax())
    shifted = logits.astype(np.float64) - float(logits[token])
    return token, -float(np.log(np.exp(shifted).sum()))


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token. `temperature == 0` is greedy (and ignores the rest).

    Attributes:
        temperature: Divides the logits before sampling; lower is more conservative.
        top_k: Sample only among the k most probable tokens (0: all).
        top_p: Sample only among the most probable tokens whose probabilities sum to p (1: all).
        seed: Seeds the stream's generator, so the same request samples the same tokens.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Picks tokens for one stream; returns the token and its log-probability under the model."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng: np.random.Generator | None = None  # made at the first draw: greedy never does

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:  # seeding from the OS costs tens of µs, per stream
            self._rng = np.random.default_rng(self.params.seed)
        return self._rng

    def choose(self, logits: np.ndarray) -> tuple[int, float]:
        """`logits: (V,)` -> (token, log p(token)) with p the model's unscaled distribution."""
        if self.params.greedy:
            return greedy(logits)
        logprobs = log_softmax(logits.astype(np.float64))
        scaled = log_softmax(logprobs / self.params.temperature)
        order = np.argsort(-scaled, kind="stable")
        keep = len(order)
        if self.params.top_k:
            keep = min(keep, self.params.top_k)
        if self.params.top_p < 1.0:
            cumulative = np.cumsum(np.exp(scaled[order]))
            keep = min(keep, int(np.searchsorted(cumulative, self.params.top_p)) + 1)
        candidates = order[:keep]
        weights = np.exp(scaled[candidates])
        token = int(self.rng.choice(candidates, p=weights / weights.sum()))
        return token, float(logprobs[token])


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length normalization ((5 + |Y|) / 6)^alpha; alpha = 0 scores by total log-prob."""
    return float(((5.0 + length) / 6.0) ** alpha)


class Hypothesis(NamedTuple):  # a tuple: a beam makes tens of them per step
    tokens: tuple[int, ...]  # without the end-of-sequence token
    token_logprobs: tuple[float, ...]  # log p of each token in `tokens`
    logprob: float  # total, including the end-of-sequence token when it ended with one
    score: float  # logprob / length_penalty
    finished: bool  # ended with end-of-sequence (False: cut at max_len)


@dataclass
class BeamSearch:
    """Beam search over a model that the caller steps.

    Usage: `beams = BeamSearch(...)`; while not `beams.done`: step the model for the live beams
    (`beams.live`, initially one empty beam) to get `logprobs: (len(live), V)` and call
    `parents = beams.advance(logprobs)`; the next live beam `i` continues from the previous live
    beam `parents[i]` with token `beams.live[i].tokens[-1]`. `beams.ranked()` gives the results.

    With `alpha == 0` the search stops as soon as no live beam can beat the `size`-th finished
    one (log-probabilities only fall as a sequence grows); with `alpha > 0` normalized scores can
    rise with length, so it runs until every beam has ended or reached `max_len`. No beam ends
    before `min_len` tokens (the end of sequence is masked out until then).
    """

    size: int
    eos_id: int
    max_len: int
    alpha: float = 0.0
    min_len: int = 0
    live: list[Hypothesis] = field(default_factory=lambda: [Hypothesis((), (), 0.0, 0.0, False)])
    ended: list[Hypothesis] = field(default_factory=list)

    @property
    def done(self) -> bool:
        if not self.live:
            return True
        if self.alpha != 0.0 or len(self.ended) < self.size:
            return False
        kth = sorted(h.score for h in self.ended)[-self.size]
        return max(h.logprob for h in self.live) <= kth

    def advance(self, logprobs: np.ndarray) -> list[int]:
        """Extend the live beams by one token; returns each new live beam's parent index."""
        if self.live and len(self.live[0].tokens) < self.min_len:  # too soon to end
            logprobs = logprobs.copy()
            logprobs[:, self.eos_id] = -np.inf
        totals = np.array([h.logprob for h in self.live])[:, None] + logprobs  # (n, V)
        order = np.argsort(-totals, axis=None, kind="stable")[: 2 * self.size]
        # the candidates as Python numbers at once (numpy scalars one by one cost more)
        rows, tokens = (a.tolist() for a in np.divmod(order, logprobs.shape[1]))
        picked = zip(
            rows, tokens, totals.ravel()[order].tolist(), logprobs.ravel()[order].tolist(),
            strict=True,
        )  # fmt: skip
        live, parents = [], []
        for parent, token, total, token_logprob in picked:
            before = self.live[parent]
            if token == self.eos_id:
                score = total / length_penalty(len(before.tokens) + 1, self.alpha)
                self.ended.append(
                    Hypothesis(before.tokens, before.token_logprobs, total, score, True)
                )
                continue
            grown = (*before.tokens, token)
            token_logprobs = (*before.token_logprobs, token_logprob)
            score = total / length_penalty(len(grown), self.alpha)
            live.append(Hypothesis(grown, token_logprobs, total, score, False))
            parents.append(parent)
            if len(live) == self.size:
                break
        if live and len(live[0].tokens) >= self.max_len:
            self.ended.extend(live)
            live, parents = [], []
        self.live = live
        return parents

    def ranked(self) -> list[Hypothesis]:
        """The best `size` hypotheses, best first (ended ones, else the live ones at their end)."""
        pool = self.ended or self.live
        return sorted(pool, key=lambda h: -h.score)[: self.size]
