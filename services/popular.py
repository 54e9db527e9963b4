"""Autocomplete's popular-query index and the ranking that merges it with the model's beam.

Production query autocompletion generates candidates and ranks them: the frequent past queries
that start with the prefix (MostPopularCompletion's answer), plus the language model's beam-search
completions, which also cover prefixes no past query starts with. Every candidate scores

    model_weight * model_logprob + popularity_weight * log_popularity
        + length_weight * len(completion) + suffix terms

with `log_popularity = ln(count / total_count)` of the query in the index (a candidate the index
does not hold takes `unseen_log_popularity`) and `model_logprob` the model's log-probability of the
completion and its end given the prefix (an index candidate the model did not score takes
`unscored_logprob`). The weights are fit on the validation split by recur-train and kept in the
manifest (`bundle.proto`: `PopularIndex`, `RankingWeights`).

A prefix that no indexed query completes (a third or more of a real log's prefixes) gets no
index candidates; for it, the suffix index (every query's word-boundary endings, Mitra and
Craswell, CIKM 2015) lends candidates: its last words are looked up among popular endings
("best flights to den" + "to denver" lends "ver"). Its suffix terms are `suffix_weight *
ln(ending count) + fragment_weight * words matched` (`unlent_score` for the beam's candidates),
with a second set of weights fit on such prefixes (`suffix_ranking`).

The index file is a NumPy `.npz` of three arrays, loaded with `allow_pickle=False`: `blob`
(uint8, every query's UTF-8 bytes in byte order), `offsets` (int64, queries + 1) and `counts`
(int64). A prefix's queries are one contiguous range of the sorted queries, found by bisection
(UTF-8 has no 0xFF byte, so `prefix + b"\\xff"` sorts after every extension of the prefix).

Torch-free and grpc-free: numpy only.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from services.errors import BundleError

if TYPE_CHECKING:
    from protos.recur.v1 import bundle_pb2

MAX_INDEX_BYTES = 256 << 20  # refuse larger index files (uncompressed arrays) outright
ARRAYS = ("blob", "offsets", "counts")
SUFFIX_WORDS = 3  # the most words of a prefix's end looked up among popular query endings


@dataclass(frozen=True)
class RankingWeights:
    """The manifest's `RankingWeights` (the score of a candidate; see the module docstring)."""

    model_weight: float = 1.0
    popularity_weight: float = 1.0
    unseen_log_popularity: float = -20.0
    unscored_logprob: float = -30.0
    length_weight: float = 0.0
    suffix_weight: float = 0.0
    fragment_weight: float = 0.0
    unlent_score: float = 0.0

    @classmethod
    def from_proto(cls, message: bundle_pb2.RankingWeights) -> RankingWeights:
        """The weights of a manifest's `RankingWeights` message."""
        return cls(**{f.name: getattr(message, f.name) for f in dataclasses.fields(cls)})


class Lent(NamedTuple):
    """A candidate that a popular query ending lent to a prefix no indexed query completes."""

    completion: str
    ending_count: int  # in the suffix index
    words: int  # of the prefix's end that the ending matched


@dataclass(frozen=True)
class Suggestion:
    """One ranked completion: the text after the prefix, its score and what it came from."""

    completion: str
    score: float
    model_logprob: float | None  # None: the model did not score it
    count: int  # in the index; 0: a model-only candidate


class _Keys(Sequence[bytes]):
    """The sorted queries as bytes, for `bisect`: the blob as one `bytes` and the offsets as
    Python ints, so that a probe is a plain slice (numpy indexing costs several times more, and
    every keystroke probes the index a few hundred times)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.data, self.offsets = blob.tobytes(), offsets.tolist()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]
        return self.data[self.offsets[i] : self.offsets[i + 1]]


class PopularIndex:
    """Distinct queries with their counts, sorted by UTF-8 bytes.

    Build one with `PopularIndex.build` (recur-train), write it with `save`, read it back with
    `PopularIndex.load` (which verifies it).
    """

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> None:
        self.blob, self.offsets, self.counts = blob, offsets, counts
        self.keys = _Keys(blob, offsets)
        self.total_count = int(counts.sum())

    @classmethod
    def build(cls, counts: Mapping[str, int], *, max_queries: int = 0) -> PopularIndex:
        """The index of `counts` (query -> times seen), keeping the `max_queries` most frequent
        (ties: the smaller query in byte order; 0 keeps all)."""
        items = sorted(((q.encode(), n) for q, n in counts.items() if q and n > 0),
                       key=lambda item: (-item[1], item[0]))  # fmt: skip
        if max_queries:
            items = items[:max_queries]
        items.sort()
        lengths = np.array([len(q) for q, _ in items], dtype=np.int64)
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        blob = np.frombuffer(b"".join(q for q, _ in items), dtype=np.uint8)
        return cls(blob, offsets, np.array([n for _, n in items], dtype=np.int64))

    def save(self, path: Path) -> None:
        """Write the three arrays as an uncompressed `.npz`."""
        with path.open("wb") as f:
            np.savez(f, blob=self.blob, offsets=self.offsets, counts=self.counts)

    @classmethod
    def load(
        cls, path: Path, *, sha256: str = "", max_bytes: int = MAX_INDEX_BYTES
    ) -> PopularIndex:
        """Read and verify the index at `path`.

        Args:
            path: the `.npz` file.
            sha256: its expected hex digest (the manifest's); "" skips the check.
            max_bytes: the largest file, and the largest total of its uncompressed arrays.

        Raises:
            BundleError: a missing, oversized or corrupt file, a digest that does not match, or
                arrays that do not form an index (wrong names or types, offsets out of order or
                out of range, counts not positive, queries unsorted, repeated or not UTF-8).
        """
        try:
            size = path.stat().st_size
        except OSError as e:
            raise BundleError(f"{path}: popular-query index cannot be read ({e})") from None
        if size > max_bytes:
            raise BundleError(f"{path}: popular-query index is {size:,} bytes, over the limit "
                              f"of {max_bytes:,} bytes")  # fmt: skip
        data = path.read_bytes()
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise BundleError(f"{path}: popular-query index does not match its sha256")
        arrays = _read_arrays(path, max_bytes=max_bytes)
        index = cls(arrays["blob"], arrays["offsets"], arrays["counts"])
        index._check(path)
        return index

    def _check(self, path: Path) -> None:
        blob, offsets, counts = self.blob, self.offsets, self.counts
        problems = [
            (len(offsets) == len(counts) + 1, "offsets must have one more entry than counts"),
            (len(offsets) > 0 and offsets[0] == 0, "offsets must start at 0"),
            (len(offsets) > 0 and offsets[-1] == len(blob), "offsets must end at the blob's end"),
            (bool(np.all(np.diff(offsets) > 0)), "every query must be non-empty, in order"),
            (bool(np.all(counts > 0)), "every count must be positive"),
        ]
        for ok, message in problems:
            if not ok:
                raise BundleError(f"{path}: not a popular-query index: {message}")
        try:
            bytes(blob).decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"{path}: not a popular-query index: not UTF-8") from None
        keys = self.keys
        if any(keys[i] >= keys[i + 1] for i in range(len(keys) - 1)):
            raise BundleError(f"{path}: not a popular-query index: queries unsorted or repeated")

    def __len__(self) -> int:
        return len(self.counts)

    def prefix_range(self, prefix: str) -> tuple[int, int]:
        """The positions `[lo, hi)` of the queries that start with `prefix` (itself included)."""
        key = prefix.encode()
        lo = bisect.bisect_left(self.keys, key)
        return lo, bisect.bisect_left(self.keys, key + b"\xff", lo)

    def count(self, query: str) -> int:
        """Times `query` was seen (0: not in the index)."""
        key = query.encode()
        i = bisect.bisect_left(self.keys, key)
        return int(self.counts[i]) if i < len(self) and self.keys[i] == key else 0

    def completions(self, prefix: str, *, k: int = 10) -> list[tuple[str, int]]:
        """The `k` most frequent queries that start with `prefix` (and are longer), as
        `(completion after the prefix, count)`, most frequent first (ties in byte order)."""
        lo, hi = self.prefix_range(prefix)
        if lo < hi and self.keys[lo] == prefix.encode():
            lo += 1  # the prefix itself is a query; its completion would be empty
        if lo >= hi or k <= 0:
            return []
        counts = self.counts[lo:hi]
        top = np.argsort(-counts, kind="stable")[:k] if len(counts) > k else None
        picked = range(hi - lo) if top is None else top
        found = [(self.keys[lo + int(i)].decode(), int(counts[i])) for i in picked]
        found.sort(key=lambda item: (-item[1], item[0].encode()))
        return [(query[len(prefix) :], n) for query, n in found[:k]]

    def log_popularity(self, count: int, weights: RankingWeights) -> float:
        """ln(count / total_count), or the weights' value for a query the index lacks."""
        if count <= 0 or self.total_count <= 0:
            return weights.unseen_log_popularity
        return math.log(count / self.total_count)


def query_suffixes(counts: Mapping[str, int]) -> Counter[str]:
    """The suffix index's entries (Mitra and Craswell, CIKM 2015): every query's endings that
    start at one of its words after the first ("cheap flights to denver" gives "flights to
    denver", "to denver" and "denver"), each counted as often as queries end with it."""
    suffixes: Counter[str] = Counter()
    for query, n in counts.items():
        words = query.split(" ")
        for start in range(1, len(words)):
            ending = " ".join(words[start:])
            if ending:
                suffixes[ending] += n
    return suffixes


def suffix_completions(
    suffixes: PopularIndex, prefix: str, *, k: int, max_words: int = SUFFIX_WORDS
) -> list[Lent]:
    """Completions of `prefix` lent by popular query endings, for prefixes that no past query
    starts with: the prefix's last words (up to `max_words`, the word being typed included;
    the longest first) are looked up in the suffix index, and each ending that extends them
    lends the rest of it ("best flights to den" + "to denver" gives "ver").

    Returns:
        Up to `k` candidates with distinct completions, from the longest matching fragment
        first, most frequent first within a fragment.
    """
    words = prefix.split(" ")
    found: dict[str, Lent] = {}
    for start in range(max(0, len(words) - max_words), len(words)):
        fragment = " ".join(words[start:])
        if not fragment:
            continue
        for completion, n in suffixes.completions(fragment, k=k):
            found.setdefault(completion, Lent(completion, n, len(words) - start))
        if len(found) >= k:
            break
    return list(found.values())[:k]


def _read_arrays(path: Path, *, max_bytes: int) -> dict[str, np.ndarray]:
    """The archive's three arrays, refusing pickles, other members and oversized contents."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise BundleError(f"{path}: popular-query index is not an .npz archive ({e})") from None
    names = sorted(info.filename for info in infos)
    if names != sorted(f"{name}.npy" for name in ARRAYS):
        raise BundleError(f"{path}: popular-query index must hold exactly {', '.join(ARRAYS)}; "
                          f"it holds {', '.join(names) or 'nothing'}")  # fmt: skip
    if sum(info.file_size for info in infos) > max_bytes:
        raise BundleError(f"{path}: popular-query index unpacks to more than {max_bytes:,} bytes")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAYS}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: popular-query index cannot be read ({e})") from None
    kinds = {"blob": np.uint8, "offsets": np.int64, "counts": np.int64}
    for name, kind in kinds.items():
        if arrays[name].dtype != kind or arrays[name].ndim != 1:
            raise BundleError(f"{path}: popular-query index array {name!r} must be 1-D "
                              f"{np.dtype(kind).name}, got {arrays[name].ndim}-D "
                              f"{arrays[name].dtype}")  # fmt: skip
    return arrays


def rank(
    index: PopularIndex | None,
    prefix: str,
    beam: Iterable[tuple[str, float]],
    weights: RankingWeights,
    *,
    n: int = 10,
    index_k: int = 10,
    model_logprobs: Mapping[str, float] | None = None,
    lent: Sequence[Lent] = (),
    indexed: Sequence[tuple[str, int]] | None = None,
) -> list[Suggestion]:
    """The top `n` distinct suggestions for `prefix`, best first.

    Args:
        index: the popular-query index (None: model-only ranking).
        prefix: the text typed so far, in the tokenizer's normal form.
        beam: the model's beam completions of the prefix as `(completion, logprob)`.
        weights: the manifest's ranking weights (`ranking` for a prefix that the index holds
            completions of, `suffix_ranking` otherwise).
        n: suggestions to return.
        index_k: candidates taken from the index (its most frequent completions).
        model_logprobs: the model's log-probabilities of index and lent completions that it
            scored (`completion -> logprob`); beam completions carry their own.
        lent: the suffix index's candidates (`suffix_completions`), for a prefix that the index
            holds no completion of.
        indexed: `index.completions(prefix, k=index_k)` where the caller has it already (None:
            looked up here).

    Returns:
        Suggestions by descending score (ties: the more frequent, then the text); an empty
        completion (the prefix is already a whole query) is never suggested.
    """
    beam = list(beam)
    scored = dict(model_logprobs or {})
    for completion, beam_logprob in beam:
        scored.setdefault(completion, beam_logprob)
    if indexed is None:
        indexed = index.completions(prefix, k=index_k) if index is not None else []
    from_index = dict(indexed)
    lenders = {c.completion: c for c in lent}
    candidates = dict.fromkeys([*from_index, *(c for c, _ in beam), *lenders])
    suggestions = []
    for completion in candidates:
        if not completion:
            continue
        count = from_index.get(completion)  # the index's candidates come with their counts
        if count is None:
            count = index.count(prefix + completion) if index is not None else 0
        logprob = scored.get(completion)
        popularity = (
            index.log_popularity(count, weights)
            if index is not None
            else weights.unseen_log_popularity
        )
        model = logprob if logprob is not None else weights.unscored_logprob
        lender = lenders.get(completion)
        suffix = weights.unlent_score
        if lender is not None:
            suffix = weights.suffix_weight * math.log(lender.ending_count)
            suffix += weights.fragment_weight * lender.words
        score = (
            weights.model_weight * model
            + weights.popularity_weight * popularity
            + weights.length_weight * len(completion)
            + suffix
        )
        suggestions.append(Suggestion(completion, score, logprob, count))
    suggestions.sort(key=lambda s: (-s.score, -s.count, s.completion))
    return suggestions[:n]
