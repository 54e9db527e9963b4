"""Decoders against brute force: beam search on tiny Markov models, sampling's guarantees."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.decoding import BeamSearch, Sampler, SamplingParams, length_penalty, log_softmax
from services.requests import TranslateParams

EOS = 0


def markov(vocab: int, seed: int) -> np.ndarray:
    """log p(next | last token): a (V + 1, V) table whose last row is the start state."""
    rng = np.random.default_rng(seed)
    return log_softmax(rng.normal(scale=2.0, size=(vocab + 1, vocab)))


def run_beam(table: np.ndarray, size: int, max_len: int, alpha: float) -> BeamSearch:
    beam = BeamSearch(size, EOS, max_len, alpha)
    start = len(table) - 1
    while True:
        last = [h.tokens[-1] if h.tokens else start for h in beam.live]
        beam.advance(table[last])
        if beam.done:
            return beam


def brute_force(
    table: np.ndarray, max_len: int, alpha: float
) -> list[tuple[tuple[int, ...], float]]:
    """Every sequence ending in EOS within max_len tokens, or cut at max_len; best first."""
    vocab = table.shape[1]
    start = len(table) - 1
    scored = []
    for length in range(max_len + 1):
        for tokens in itertools.product(range(1, vocab), repeat=length):
            last, total = start, 0.0
            for token in tokens:
                total += table[last, token]
                last = token
            if length < max_len:
                ended = total + table[last, EOS]
                scored.append((tokens, ended / length_penalty(length + 1, alpha)))
            else:
                scored.append((tokens, total / length_penalty(length, alpha)))
    return sorted(scored, key=lambda item: -item[1])


@pytest.mark.parametrize(
    ("seed", "alpha", "reason"),
    [
        (1, 0.0, "total log-prob, early stop once no live beam can win"),
        (2, 0.0, "another table"),
        (3, 0.6, "length-normalized scores: no early stop"),
        (4, 1.0, "strong normalization"),
    ],
)
def test_wide_beam_finds_the_brute_force_optimum(seed: int, alpha: float, reason: str) -> None:
    vocab, max_len = 4, 4
    table = markov(vocab, seed)
    expected = brute_force(table, max_len, alpha)
    beam = run_beam(table, size=vocab**max_len, max_len=max_len, alpha=alpha)
    found = beam.ranked()
    assert found[0].tokens == expected[0][0], reason
    assert found[0].score == pytest.approx(expected[0][1]), reason
    top = [(h.tokens, round(h.score, 9)) for h in found[:5]]
    assert top == [(t, round(s, 9)) for t, s in expected[:5]], reason


def test_beam_of_one_is_greedy() -> None:
    table = markov(6, seed=7)
    beam = run_beam(table, size=1, max_len=10, alpha=0.0)
    last, greedy = len(table) - 1, []
    for _ in range(10):
        token = int(table[last].argmax())
        if token == EOS:
            break
        greedy.append(token)
        last = token
    assert list(beam.ranked()[0].tokens) == greedy


def test_beam_keeps_each_tokens_logprob() -> None:
    table = markov(5, seed=8)
    best = run_beam(table, size=3, max_len=5, alpha=0.0).ranked()[0]
    last, expected = len(table) - 1, []
    for token in best.tokens:
        expected.append(table[last, token])
        last = token
    assert best.token_logprobs == pytest.approx(expected)
    ending = table[last, EOS] if best.finished else 0.0
    assert best.logprob == pytest.approx(sum(expected) + ending)


def test_greedy_sampler_takes_the_argmax() -> None:
    logits = np.array([0.1, 2.0, -1.0, 1.9])
    token, logprob = Sampler(SamplingParams()).choose(logits)
    assert token == 1
    assert logprob == pytest.approx(log_softmax(logits)[1])
    rng = np.random.default_rng(0)
    for _ in range(5):  # a served vocabulary's float32 logits
        wide = (rng.standard_normal(8000) * 4).astype(np.float32)
        token, logprob = Sampler(SamplingParams()).choose(wide)
        exact = log_softmax(wide.astype(np.float64))
        assert token == int(exact.argmax()) and logprob == pytest.approx(exact[token], abs=1e-9)


def test_seeded_sampling_repeats_and_seeds_differ() -> None:
    logits = np.zeros(50)
    sampler_a = Sampler(SamplingParams(temperature=1.0, seed=11))
    sampler_b = Sampler(SamplingParams(temperature=1.0, seed=11))
    a = [sampler_a.choose(logits)[0] for _ in range(30)]
    b = [sampler_b.choose(logits)[0] for _ in range(30)]
    c_sampler = Sampler(SamplingParams(temperature=1.0, seed=12))
    c = [c_sampler.choose(logits)[0] for _ in range(30)]
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    ("params", "allowed", "reason"),
    [
        (SamplingParams(temperature=1.0, top_k=2, seed=0), {3, 1}, "top-k keeps the two best"),
        (SamplingParams(temperature=1.0, top_p=0.5, seed=0), {3}, "the best alone has p > 0.5"),
        (SamplingParams(temperature=0.01, seed=0), {3}, "a cold temperature is nearly greedy"),
    ],
)
def test_sampling_stays_inside_its_candidates(
    params: SamplingParams, allowed: set[int], reason: str
) -> None:
    logits = np.log(np.array([0.05, 0.2, 0.1, 0.6, 0.05]))
    sampler = Sampler(params)
    drawn = {sampler.choose(logits)[0] for _ in range(300)}
    assert drawn == allowed, reason


def test_sampling_follows_the_distribution() -> None:
    probabilities = np.array([0.1, 0.2, 0.7])
    sampler = Sampler(SamplingParams(temperature=1.0, seed=3))
    counts = np.bincount(
        [sampler.choose(np.log(probabilities))[0] for _ in range(4000)], minlength=3
    )
    assert counts / counts.sum() == pytest.approx(probabilities, abs=0.03)


@pytest.mark.parametrize(
    ("params", "source", "expected", "reason"),
    [
        (TranslateParams(), 7, 24, "2 x source + 10"),
        (TranslateParams(max_length_ratio=10.0, cap=512), 2000, 512, "derived length capped"),
        (TranslateParams(max_tokens=30, cap=512), 2000, 30, "explicit max_tokens"),
        (TranslateParams(min_tokens=40, cap=512), 7, 40, "derived length raised to min_tokens"),
        (TranslateParams(max_tokens=30, min_tokens=20), 7, 30, "explicit max_tokens stays"),
    ],
)
def test_translation_length_limit(
    params: TranslateParams, source: int, expected: int, reason: str
) -> None:
    assert params.limit(source) == expected, reason
