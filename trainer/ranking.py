"""Autocomplete as generate-then-rank: the popular-query index built from the training log, its
ranking weights fit on the validation split, and the QAC metrics of the ranked system, the model
alone and MostPopularCompletion on the same held-out queries.

Every held-out query (in the tokenizer's normal form) is completed from its first
max(1, len // 2) characters, and the right answer is the rest of it. The candidates of a prefix
are the index's `CANDIDATES` most frequent completions (MPC's suggestions) or, where it holds
none, the `CANDIDATES` that the suffix index's popular query endings lend, and the model's
`CANDIDATES` served beam suggestions (`Engine.complete`, the model alone); every index and lent
candidate is scored by the model too (teacher forcing through the served prompt reading), so
that the ranking (`services.popular.rank`, the code that serves) weighs every signal for every
candidate. Two sets of weights are fit, each on the validation prefixes it serves: `ranking`
where the index holds completions, `suffix_ranking` where it does not.

| metric                | meaning                                                          |
|-----------------------|------------------------------------------------------------------|
| `mrr_at_10`           | mean of 1 / rank of the right completion in the top 10 (0: absent)|
| `success_at_1`, `_10` | share of queries whose right completion is first / in the top 10 |

each for `ranked`, `model` and `mpc`, over `all` queries, `seen` prefixes (some training query
starts with it: the index has it) and `unseen` ones, and by prefix length in characters
(`len_1_3`, `len_4_8`, `len_9_plus`); `*_share` is each class's share of the queries.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from protos.recur.v1 import bundle_pb2
from services.decoding import SamplingParams
from services.model import LoadedModel
from services.offline import Offline, open_model
from services.popular import (
    Lent,
    PopularIndex,
    RankingWeights,
    query_suffixes,
    rank,
    suffix_completions,
)
from services.requests import CompleteParams
from services.suggestions import beam_needed, normal_form
from trainer.config import TrainConfig

INDEX_FILE = "popular.npz"
SUFFIX_FILE = "suffixes.npz"
CANDIDATES = 10  # suggestions taken from the index and from the beam for each prefix
MAX_NEW_TOKENS = 64  # longest beam completion: longer than any held-out query's second half
K = 10
POPULARITY_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)
UNSEEN_OFFSETS = (0.0, -1.0, -2.0, -4.0, -6.0, -8.0, -12.0, -16.0, -24.0, -32.0)  # below ln(1/N)
LENGTH_WEIGHTS = (0.0, -0.2, 0.1, 0.2, 0.4, 0.8)  # per character of the completion
# prefixes the index holds no completion of: beam and lent candidates
LENT_MODEL_WEIGHTS = (1.0, 0.5, 0.25, 0.1, 0.0)
SUFFIX_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)  # of ln(the lending ending's count)
FRAGMENT_WEIGHTS = (0.0, 1.0, 2.0, 4.0)  # per word of the prefix that the ending matched
UNLENT_SCORES = (0.0, -40.0, -10.0, 5.0)  # the suffix terms of the beam's candidates
LENGTHS = (("len_1_3", 1, 3), ("len_4_8", 4, 8), ("len_9_plus", 9, math.inf))


def query_counts(queries: Iterable[str], tokenizer: Tokenizer) -> Counter[str]:
    """Each distinct query of the training log in normal form, and how often it occurs."""
    return Counter(q for q in (normal_form(tokenizer, raw) for raw in queries) if q)


@dataclass
class Case:
    """One held-out query: its prefix, the right completion and every candidate's signals."""

    prefix: str
    target: str
    mpc: list[str]  # the index's most frequent completions, best first
    beam: list[tuple[str, float]]  # the model's beam completions and log-probabilities
    scored: dict[str, float] = field(default_factory=dict)  # model logprob: index, lent ones
    seen: bool = False  # some training query starts with the prefix
    lent: list[Lent] = field(default_factory=list)  # the suffix index's, where `mpc` is empty

    @property
    def ranked_beam(self) -> list[tuple[str, float]]:
        """The beam's candidates as the service ranks them: none where the index's (or the
        lent) candidates fill the top `K` (the service runs no beam search then)."""
        return self.beam if beam_needed(len(self.mpc), len(self.lent), K) else []


def split_text(query: str) -> tuple[str, str]:
    """The prefix (first max(1, len // 2) characters) and the completion of a query."""
    cut = max(1, len(query) // 2)
    return query[:cut], query[cut:]


def suggestions(
    engine: Offline, prefixes: list[str], *, k: int = CANDIDATES
) -> list[list[tuple[str, float]]]:
    """The model's `k` served suggestions of every prefix (text, log-probability), best first:
    `Engine.complete` with the model alone (its beam search), every setting spelled out."""
    params = CompleteParams(max_tokens=MAX_NEW_TOKENS, sampling=SamplingParams(temperature=0.0),
                            stop=(), suggestions=k, model_only=True)  # fmt: skip
    return [[(s.text, s.logprob) for s in o.final.suggestions] if o.final else []
            for o in engine.complete(prefixes, params)]  # fmt: skip


def build_cases(
    engine: Offline,
    index: PopularIndex | None,
    queries: list[str],
    suffixes: PopularIndex | None = None,
) -> list[Case]:
    """The candidates of every query's prefix, through the serving engine (with no index: the
    model's alone; with a suffix index: the endings' where the index has none)."""
    model = engine.model
    tokenizer = model.tokenizer
    split = [split_text(q) for q in (normal_form(tokenizer, raw) for raw in queries) if q]
    beams = suggestions(engine, [prefix for prefix, _ in split])
    cases, pending = [], []  # pending: (case, completion, token ids from [BOS], prefix length)
    for (prefix, target), beam in zip(split, beams, strict=True):
        mpc = [c for c, _ in index.completions(prefix, k=CANDIDATES)] if index else []
        lo, hi = index.prefix_range(prefix) if index else (0, 0)
        lent = (suffix_completions(suffixes, prefix, k=CANDIDATES)
                if suffixes is not None and not mpc else [])  # fmt: skip
        case = Case(prefix, target, mpc, beam, dict(beam), lo < hi, lent)
        prefix_ids = [model.bos_id, *tokenizer.encode(prefix).ids]
        asked = dict.fromkeys([*mpc, *(c.completion for c in lent)])
        pending += [(case, c, [*prefix_ids, *tokenizer.encode(c).ids, model.eos_id],
                     len(prefix_ids)) for c in asked if c not in case.scored]  # fmt: skip
        cases.append(case)
    logprobs = engine.logprobs([ids for _, _, ids, _ in pending],
                               start=[n for _, _, _, n in pending])  # fmt: skip
    for (case, completion, _, _), logprob in zip(pending, logprobs, strict=True):
        case.scored[completion] = logprob
    for case in cases:
        case.scored = {c: case.scored[c] for c in [*case.mpc, *(c.completion for c in case.lent)]}
    return cases


def model_mrr(cases: list[Case]) -> float:
    """MRR@10 of the model's suggestions alone."""
    return sum(_reciprocal([c for c, _ in case.beam], case.target) for case in cases) / max(
        len(cases), 1
    )


def bundle_index(model: LoadedModel, which: str = "file") -> PopularIndex | None:
    """The bundle's popular-query index (`which="suffix_file"`: its suffix index), None where
    it has none."""
    manifest = model.bundle.manifest
    name = getattr(manifest.popular, which)
    if not name:
        return None
    return PopularIndex.load(model.bundle.path / name, sha256=manifest.sha256.get(name, ""))


@dataclass(frozen=True)
class Weights:
    """Both sets of ranking weights: `ranking` for prefixes the index holds completions of,
    `suffix_ranking` (None: no suffix index) for the others, as the service picks them."""

    ranking: RankingWeights
    suffix_ranking: RankingWeights | None = None

    def of(self, case: Case) -> RankingWeights:
        if case.mpc or self.suffix_ranking is None:
            return self.ranking
        return self.suffix_ranking


def ranked(case: Case, index: PopularIndex, weights: Weights) -> list[str]:
    """The served ranking's top `K` completions for the case."""
    found = rank(index, case.prefix, case.ranked_beam, weights.of(case), n=K,
                 index_k=CANDIDATES, model_logprobs=case.scored, lent=case.lent)  # fmt: skip
    return [s.completion for s in found]


def _reciprocal(candidates: list[str], target: str) -> float:
    top = candidates[:K]
    return 1.0 / (top.index(target) + 1) if target in top else 0.0


class _Table:
    """Every case's candidates as padded arrays (cases x candidates), so that a grid point's
    MRR@10 is a few array operations: the model's log-probability, the log-popularity (NaN: not
    in the index), the length, the lending ending's ln(count) (NaN: not lent) and words, and the
    order `popular.rank` breaks score ties in (the more frequent, then the text)."""

    def __init__(self, cases: list[Case], index: PopularIndex) -> None:
        floor = -math.log(max(index.total_count, 1))  # ln(1 / total): the rarest query's
        width = max((len(self._texts(case)) for case in cases), default=1) or 1
        shape = (len(cases), width)
        self.logprob, self.popularity, self.length, self.lent_count, self.words, self.tie = (
            np.full(shape, np.nan) for _ in range(6)
        )
        self.valid = np.zeros(shape, dtype=bool)
        self.target = np.full(len(cases), -1)
        for i, case in enumerate(cases):
            texts = self._texts(case)
            logprob = {**case.scored, **dict(case.ranked_beam)}
            counts = [index.count(case.prefix + c) for c in texts]
            lent = {c.completion: c for c in case.lent}
            n = len(texts)
            self.valid[i, :n] = True
            self.logprob[i, :n] = [logprob[c] for c in texts]
            self.popularity[i, :n] = [math.log(c) + floor if c > 0 else np.nan for c in counts]
            self.length[i, :n] = [len(c) for c in texts]
            self.lent_count[i, :n] = [math.log(lent[c].ending_count) if c in lent else np.nan
                                      for c in texts]  # fmt: skip
            self.words[i, :n] = [lent[c].words if c in lent else 0 for c in texts]
            order = sorted(range(n), key=lambda j: (-counts[j], texts[j]))
            self.tie[i, order] = np.arange(n)
            self.target[i] = texts.index(case.target) if case.target in texts else -1
        self.floor = floor

    @staticmethod
    def _texts(case: Case) -> list[str]:
        every = [*case.mpc, *(c for c, _ in case.ranked_beam), *(c.completion for c in case.lent)]
        return [c for c in dict.fromkeys(every) if c]

    def mrr(self, w: RankingWeights) -> float:
        """MRR@10 of `popular.rank` with `w` over every case (a missing target counts 0)."""
        pop = np.where(np.isnan(self.popularity), w.unseen_log_popularity, self.popularity)
        lent = np.where(
            np.isnan(self.lent_count),
            w.unlent_score,
            w.suffix_weight * self.lent_count + w.fragment_weight * self.words,
        )
        score = (w.model_weight * self.logprob + w.popularity_weight * pop
                 + w.length_weight * self.length + lent)  # fmt: skip
        score = np.where(self.valid, score, -np.inf)
        rows = np.arange(len(self.target))
        hit = self.target >= 0
        own = score[rows, np.maximum(self.target, 0)][:, None]
        tie = self.tie[rows, np.maximum(self.target, 0)][:, None]
        place = ((score > own) | ((score == own) & (self.tie < tie) & self.valid)).sum(axis=1)
        return float(np.where(hit & (place < K), 1.0 / (place + 1), 0.0).sum() / max(len(rows), 1))


def fit(cases: list[Case], index: PopularIndex) -> tuple[RankingWeights, float]:
    """The `ranking` weights of the best validation MRR@10 over a grid (the model's weight
    fixed at 1: only the ratios matter), and that MRR, on cases whose prefix the index holds
    completions of (the ones these weights serve)."""
    table = _Table(cases, index)
    best = (-1.0, RankingWeights())
    for b, offset, length in itertools.product(POPULARITY_WEIGHTS, UNSEEN_OFFSETS, LENGTH_WEIGHTS):
        weights = RankingWeights(1.0, b, table.floor + offset, _typical_logprob(cases), length)
        mrr = table.mrr(weights)
        if mrr > best[0]:
            best = (mrr, weights)
    return best[1], best[0]


def fit_suffix(cases: list[Case], index: PopularIndex) -> tuple[RankingWeights, float]:
    """The `suffix_ranking` weights of the best validation MRR@10 over a grid, and that MRR, on
    cases whose prefix the index holds no completion of (beam and lent candidates)."""
    table = _Table(cases, index)
    best = (-1.0, RankingWeights())
    grid = itertools.product(LENT_MODEL_WEIGHTS, SUFFIX_WEIGHTS, FRAGMENT_WEIGHTS,
                             LENGTH_WEIGHTS, UNLENT_SCORES)  # fmt: skip
    for model, suffix, fragment, length, unlent in grid:
        weights = RankingWeights(model, 0.0, table.floor, _typical_logprob(cases), length,
                                 suffix, fragment, unlent)  # fmt: skip
        mrr = table.mrr(weights)
        if mrr > best[0]:
            best = (mrr, weights)
    return best[1], best[0]


def _typical_logprob(cases: list[Case]) -> float:
    """The median model log-probability of index candidates: the stand-in for one the serving
    side did not score."""
    values = [v for case in cases for v in case.scored.values()]
    return float(np.median(values)) if values else -30.0


def report(cases: list[Case], index: PopularIndex, weights: Weights) -> dict[str, float]:
    """MRR@10 and success@1/@10 of the ranked system, the model alone and MPC, by class."""
    systems = {
        "ranked": [ranked(case, index, weights) for case in cases],
        "model": [[c for c, _ in case.beam] for case in cases],
        "mpc": [case.mpc for case in cases],
    }
    classes: dict[str, list[bool]] = {
        "all": [True] * len(cases),
        "seen": [case.seen for case in cases],
        "unseen": [not case.seen for case in cases],
        **{name: [lo <= len(case.prefix) <= hi for case in cases] for name, lo, hi in LENGTHS},
    }
    result: dict[str, float] = {"qac_queries": float(len(cases))}
    for cls, member in classes.items():
        chosen = [i for i, m in enumerate(member) if m]
        if cls != "all":
            result[f"qac_{cls}_share"] = len(chosen) / max(len(cases), 1)
        for system, lists in systems.items():
            ranks = [_reciprocal(lists[i], cases[i].target) for i in chosen]
            n = max(len(ranks), 1)
            result[f"{system}_mrr_at_10_{cls}"] = sum(ranks) / n
            result[f"{system}_success_at_1_{cls}"] = sum(r == 1.0 for r in ranks) / n
            result[f"{system}_success_at_10_{cls}"] = sum(r > 0 for r in ranks) / n
    return result


def add_popular_index(staging: Path, manifest: bundle_pb2.BundleManifest, cfg: TrainConfig) -> None:
    """Write the popular-query index and the suffix index of the run's training log into the
    staged bundle, fit both sets of ranking weights on (up to `--eval-completions` of) its
    validation queries through the staged graphs, and record them in `manifest.popular`."""
    from trainer.tasks import get_task

    train, valid, _ = get_task("autocomplete").load_raw(cfg)
    model = open_model(staging, staged=manifest)
    counts = query_counts(train, model.tokenizer)
    index = PopularIndex.build(counts, max_queries=cfg.popular_max_queries)
    index.save(staging / INDEX_FILE)
    suffixes = PopularIndex.build(query_suffixes(counts), max_queries=cfg.popular_max_queries)
    suffixes.save(staging / SUFFIX_FILE)
    cases = build_cases(Offline(model), index, list(valid)[: cfg.eval_completions], suffixes)
    known = [case for case in cases if case.mpc]
    weights, mrr = fit(known, index) if known else (RankingWeights(), 0.0)
    unknown = [case for case in cases if not case.mpc]
    lent_weights, lent_mrr = fit_suffix(unknown, index) if unknown else (RankingWeights(), 0.0)
    manifest.popular.CopyFrom(
        bundle_pb2.PopularIndex(
            file=INDEX_FILE, queries=len(index), total_count=index.total_count,
            log_queries=len(counts), ranking=_message(weights, len(known), mrr),
            suffix_file=SUFFIX_FILE, suffixes=len(suffixes),
            suffix_ranking=_message(lent_weights, len(unknown), lent_mrr),
        )
    )  # fmt: skip


def _message(weights: RankingWeights, queries: int, mrr: float) -> bundle_pb2.RankingWeights:
    return bundle_pb2.RankingWeights(
        **dataclasses.asdict(weights), fit_queries=queries, fit_mrr_at_10=mrr,
        candidates=CANDIDATES,
    )  # fmt: skip


def weights_of(manifest: bundle_pb2.BundleManifest) -> Weights:
    """The manifest's ranking weights (no `suffix_ranking` without a suffix index)."""
    popular = manifest.popular
    suffix = RankingWeights.from_proto(popular.suffix_ranking) if popular.suffix_file else None
    return Weights(RankingWeights.from_proto(popular.ranking), suffix)
