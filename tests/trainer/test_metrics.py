"""Metric functions against values computed by hand."""

from __future__ import annotations

import math

import pytest

from trainer import metrics
from trainer.data.tokenizer import word_tokenizer


def test_perplexity_and_bits() -> None:
    assert metrics.perplexity(math.log(4)) == pytest.approx(4.0)  # uniform over 4 tokens
    assert metrics.bits(3 * math.log(2)) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("labels", "predictions", "accuracy", "f1", "reason"),
    [
        ([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 3 / 5, (1 / 2 + 2 / 3) / 2,
         "class 0: tp 1 fp 1 fn 1 -> 1/2; class 1: tp 2 fp 1 fn 1 -> 2/3"),
        ([0, 1, 1, 1], [1, 1, 1, 1], 3 / 4, (0 + 6 / 7) / 2,
         "always positive: class 0 scores 0, class 1: tp 3 fp 1 -> 6/7"),
        ([2, 2], [2, 2], 1.0, 1.0, "one class, all right"),
        ([], [], 0.0, 0.0, "no examples"),
    ],
)  # fmt: skip
def test_accuracy_and_macro_f1(labels: list[int], predictions: list[int], accuracy: float,
                               f1: float, reason: str) -> None:  # fmt: skip
    assert metrics.accuracy(labels, predictions) == pytest.approx(accuracy), reason
    assert metrics.macro_f1(labels, predictions) == pytest.approx(f1), reason


@pytest.mark.parametrize(
    ("hypothesis", "reference", "score", "reason"),
    [
        ("the cat sat on the mat", "the cat sat on a mat", 100 * (1 / 12) ** 0.25,
         "precisions 5/6, 3/5, 2/4, 1/3; same length: no brevity penalty"),
        ("the cat sat on", "the cat sat on the mat", 100 * math.exp(1 - 6 / 4),
         "every n-gram matches; brevity penalty exp(1 - 6/4)"),
        ("the cat sat on the mat.", "the cat sat on the mat .", 100.0,
         "13a splits the full stop off, so both tokenize alike"),
    ],
)  # fmt: skip
def test_bleu(hypothesis: str, reference: str, score: float, reason: str) -> None:
    assert metrics.bleu([hypothesis], [reference]) == pytest.approx(score, abs=1e-9), reason


def test_bleu_of_nothing_is_zero() -> None:
    assert metrics.bleu([], []) == 0.0


def test_references_take_the_tokenizers_normal_form() -> None:
    tokenizer = word_tokenizer(["the cat"])
    assert metrics.normal_form(tokenizer, "The Cat, sat.") == "the cat , sat ."


def test_reciprocal_ranks() -> None:
    assert metrics.reciprocal_rank(["a", "b", "c"], "c") == pytest.approx(1 / 3)
    assert metrics.reciprocal_rank(["a", "b", "c"], "z") == 0.0
    assert metrics.reciprocal_rank(["a", "b", "c"], "c", k=2) == 0.0  # ranked below k
    ranked = [(["a", "b"], "b"), (["x"], "y"), (["c"], "c")]
    assert metrics.mean_reciprocal_rank(ranked) == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert metrics.mean_reciprocal_rank([]) == 0.0


def test_split_query() -> None:
    assert metrics.split_query((1, 2, 3, 4, 5)) == ((1, 2), (3, 4, 5))
    assert metrics.split_query((7,)) == ((7,), ())


def test_most_popular_completion() -> None:
    log = [(1, 2, 3)] * 3 + [(1, 2, 4)] * 5 + [(1, 5)] * 2 + [(1, 2, 0)] * 2 + [(2,)]
    mpc = metrics.MostPopularCompletion(log)
    assert mpc.complete((1, 2)) == [(4,), (3,), (0,)]
    # (1, 2, 0) and (1, 5) both occur twice: the tie goes to the lexicographically smaller.
    assert mpc.complete((1,)) == [(2, 4), (2, 3), (2, 0), (5,)]
    assert mpc.complete((1,), k=2) == [(2, 4), (2, 3)]
    assert mpc.complete((1, 2, 3)) == [()]  # the prefix is itself a query
    assert mpc.complete((9,)) == []  # never seen: the baseline has nothing to offer
    queries = [(1, 2, 4), (1, 5), (3, 3)]  # prefixes (1,), (1,), (3,)
    ranked = [(mpc.complete(p), c) for p, c in map(metrics.split_query, queries)]
    assert metrics.mean_reciprocal_rank(ranked) == pytest.approx((1 + 1 / 4 + 0) / 3)
