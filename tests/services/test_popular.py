"""The popular-query index (build, save, verified load, prefix lookup) and the ranking that
merges its completions with the model's beam (services/popular.py)."""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from services.errors import BundleError
from services.popular import (
    Lent,
    PopularIndex,
    RankingWeights,
    query_suffixes,
    rank,
    suffix_completions,
)

LOG = {"weather": 5, "weather today": 9, "web mail": 3, "wet": 1, "zebra": 2, "über": 4, "we": 7}


@pytest.fixture
def index(tmp_path: Path) -> PopularIndex:
    built = PopularIndex.build(LOG)
    built.save(tmp_path / "popular.npz")
    return PopularIndex.load(tmp_path / "popular.npz")


@pytest.mark.parametrize(
    ("prefix", "k", "expected", "reason"),
    [
        ("we", 10, [("ather today", 9), ("ather", 5), ("b mail", 3), ("t", 1)],
         "most frequent first; the prefix itself (a query) is not a completion"),
        ("wea", 1, [("ther today", 9)], "k bounds the answer"),
        ("", 2, [("weather today", 9), ("we", 7)], "the empty prefix: the most popular queries"),
        ("ü", 10, [("ber", 4)], "prefixes are characters, not bytes"),
        ("x", 10, [], "no query starts with it"),
        ("weather today!", 10, [], "longer than every query"),
    ],
)  # fmt: skip
def test_completions(index: PopularIndex, prefix: str, k: int,
                     expected: list[tuple[str, int]], reason: str) -> None:  # fmt: skip
    assert index.completions(prefix, k=k) == expected, reason


def test_query_suffixes_are_word_boundary_endings() -> None:
    got = query_suffixes({"cheap flights to denver": 3, "fly to denver": 2, "denver": 5})
    assert got == {"flights to denver": 3, "to denver": 5, "denver": 5}, "whole queries are not"


ENDED = {"cheap flights to denver": 3, "fly to denver": 2, "tickets to dallas": 4,
         "hotels in denmark": 1}  # fmt: skip
SUFFIXES = PopularIndex.build(query_suffixes(ENDED))


@pytest.mark.parametrize(
    ("prefix", "k", "expected", "reason"),
    [
        ("best flights to den", 10, [Lent("ver", 3, 3), Lent("mark", 1, 1)],
         "three words match first; a completion is lent once, by its longest match"),
        ("zqx to d", 10, [Lent("enver", 5, 2), Lent("allas", 4, 2), Lent("enmark", 1, 1)],
         "most frequent first within one match"),
        ("zqx to d", 1, [Lent("enver", 5, 2)], "k bounds the answer"),
        ("to d", 10, [Lent("enver", 5, 2), Lent("allas", 4, 2), Lent("enmark", 1, 1)],
         "the whole prefix may match an ending"),
        ("zqx", 10, [], "no ending starts with it"),
        ("zqx ", 10, [], "a finished word that no ending has"),
    ],
)  # fmt: skip
def test_suffix_completions(prefix: str, k: int, expected: list[Lent], reason: str) -> None:
    assert suffix_completions(SUFFIXES, prefix, k=k) == expected, reason


def test_counts_and_popularity(index: PopularIndex) -> None:
    assert len(index) == len(LOG)
    assert index.total_count == sum(LOG.values())
    assert [index.count(q) for q in ("we", "wet", "w", "zebras")] == [7, 1, 0, 0]
    weights = RankingWeights(unseen_log_popularity=-99.0)
    assert index.log_popularity(3, weights) == pytest.approx(math.log(3 / 31))
    assert index.log_popularity(0, weights) == -99.0
    assert index.prefix_range("we") == (0, 5)  # we, weather, weather today, web mail, wet


def test_max_queries_keeps_the_most_frequent() -> None:
    kept = PopularIndex.build(LOG, max_queries=3)
    assert sorted((q, kept.count(q)) for q in LOG if kept.count(q)) == [
        ("we", 7), ("weather", 5), ("weather today", 9)]  # fmt: skip


def _write(path: Path, **arrays: np.ndarray) -> Path:
    with path.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return path


GOOD = {
    "blob": np.frombuffer(b"ab", dtype=np.uint8),
    "offsets": np.array([0, 1, 2], dtype=np.int64),
    "counts": np.array([1, 1], dtype=np.int64),
}


@pytest.mark.parametrize(
    ("arrays", "message", "reason"),
    [
        ({**GOOD, "counts": np.array([1, 0], dtype=np.int64)}, "every count must be positive",
         "a zero count"),
        ({**GOOD, "offsets": np.array([0, 0, 2], dtype=np.int64)},
         "every query must be non-empty, in order", "offsets going backwards"),
        ({**GOOD, "offsets": np.array([0, 1, 5], dtype=np.int64)},
         "offsets must end at the blob's end", "offsets past the blob"),
        ({**GOOD, "blob": np.frombuffer(b"ba", dtype=np.uint8)}, "queries unsorted or repeated",
         "out of order"),
        ({**GOOD, "blob": np.frombuffer(b"\xff\xfe", dtype=np.uint8)}, "not UTF-8",
         "bytes that are no text"),
        ({**GOOD, "counts": np.array([1.0, 1.0])}, "'counts' must be 1-D int64", "float counts"),
        ({"blob": GOOD["blob"], "offsets": GOOD["offsets"]}, "must hold exactly blob, offsets, "
         "counts", "a missing array"),
        ({**GOOD, "counts": np.array([{"a": 1}, 2], dtype=object)}, "cannot be read",
         "a pickled object array is never unpickled"),
    ],
)  # fmt: skip
def test_bad_index_files_are_refused(tmp_path: Path, arrays: dict[str, np.ndarray], message: str,
                                     reason: str) -> None:  # fmt: skip
    path = _write(tmp_path / "popular.npz", **arrays)
    with pytest.raises(BundleError, match="popular-query index") as info:
        PopularIndex.load(path)
    assert message in str(info.value), reason


def test_oversized_corrupt_or_tampered_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "popular.npz"
    PopularIndex.build(LOG).save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(PopularIndex.load(path, sha256=digest)) == len(LOG)
    with pytest.raises(BundleError, match="over the limit of 100 bytes"):
        PopularIndex.load(path, max_bytes=100)
    with pytest.raises(BundleError, match="does not match its sha256"):
        PopularIndex.load(path, sha256="0" * 64)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"not an \.npz archive"):
        PopularIndex.load(tmp_path / "junk.npz")
    with pytest.raises(BundleError, match="cannot be read"):
        PopularIndex.load(tmp_path / "missing.npz")
    with zipfile.ZipFile(tmp_path / "extra.npz", "w") as archive:
        for name in ("blob", "offsets", "counts", "extra"):
            archive.writestr(f"{name}.npy", b"")
    with pytest.raises(BundleError, match=r"it holds blob\.npy, counts\.npy, extra\.npy"):
        PopularIndex.load(tmp_path / "extra.npz")


def test_rank_merges_index_and_beam(index: PopularIndex) -> None:
    unseen = math.log(1 / 31) - 2
    weights = RankingWeights(model_weight=1.0, popularity_weight=1.0,
                             unseen_log_popularity=unseen, unscored_logprob=-10.0)  # fmt: skip
    beam = [("ather", -1.0), ("ird", -1.5), ("ather today", -4.0)]
    found = rank(index, "we", beam, weights, n=3, model_logprobs={"b mail": -2.0})
    scores = {
        "ather": -1.0 + math.log(5 / 31),
        "ather today": -4.0 + math.log(9 / 31),
        "b mail": -2.0 + math.log(3 / 31),
        "t": -10.0 + math.log(1 / 31),  # not scored by the model
        "ird": -1.5 + unseen,  # not in the index
    }
    best = sorted(scores, key=lambda c: -scores[c])[:3]
    assert [s.completion for s in found] == best
    assert [s.score for s in found] == pytest.approx([scores[c] for c in best])
    assert {s.completion: s.count for s in found}["ather"] == 5


@pytest.mark.parametrize(
    ("popularity_weight", "first", "reason"),
    [(0.0, "ird", "the model alone: its likeliest completion"),
     (5.0, "ather today", "popularity dominates: the most frequent query")],
)  # fmt: skip
def test_weights_trade_model_against_popularity(index: PopularIndex, popularity_weight: float,
                                                first: str, reason: str) -> None:  # fmt: skip
    weights = RankingWeights(popularity_weight=popularity_weight, unseen_log_popularity=-8.0)
    beam = [("ird", -0.5), ("ather", -1.0), ("ather today", -3.0)]
    found = rank(index, "we", beam, weights, n=10,
                 model_logprobs={"b mail": -4.0, "t": -6.0})  # fmt: skip
    assert found[0].completion == first, reason
    assert len({s.completion for s in found}) == len(found) == 5, "unique, every candidate"


def test_rank_without_an_index_is_the_beam_order() -> None:
    beam = [("a", -0.1), ("b", -2.0), ("", -0.05), ("c", -1.0)]
    found = rank(None, "x", beam, RankingWeights(), n=2)
    assert [s.completion for s in found] == ["a", "c"], "empty completions are never suggested"
