"""Autocomplete as generate-then-rank: the popular-query index built from the training log, its
ranking weights fit on the validation split, and the QAC metrics of the ranked system, the model
alone and MostPopularCompletion on the same held-out queries.

Every held-out query (in the tokenizer's normal form) is completed from its first
max(1, len // 2) characters, and the right answer is the rest of it. The candidates of a prefix
are the index's `CANDIDATES` most frequent completions (MPC's suggestions) and the model's
`CANDIDATES` served beam suggestions (`Engine.complete`, the model alone); every index candidate
is scored by the model too (teacher forcing through the served prompt reading), so that the
ranking (`services.popular.rank`, the code that serves) weighs both signals for every candidate.

| metric                | meaning                                                          |
|-----------------------|------------------------------------------------------------------|
| `mrr_at_10`           | mean of 1 / rank of the right completion in the top 10 (0: absent)|
| `success_at_1`, `_10` | share of queries whose right completion is first / in the top 10 |

each for `ranked`, `model` and `mpc`, over `all` queries, `seen` prefixes (some training query
starts with it: the index has it) and `unseen` ones, and by prefix length in characters
(`len_1_3`, `len_4_8`, `len_9_plus`); `*_share` is each class's share of the queries.
"""

from __future__ import annotations

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
from services.popular import PopularIndex, RankingWeights, rank
from services.requests import CompleteParams
from trainer.config import TrainConfig

INDEX_FILE = "popular.npz"
CANDIDATES = 10  # suggestions taken from the index and from the beam for each prefix
MAX_NEW_TOKENS = 64  # longest beam completion: longer than any held-out query's second half
K = 10
POPULARITY_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)
UNSEEN_OFFSETS = (0.0, -1.0, -2.0, -4.0, -6.0, -8.0, -12.0, -16.0, -24.0, -32.0)  # below ln(1/N)
LENGTHS = (("len_1_3", 1, 3), ("len_4_8", 4, 8), ("len_9_plus", 9, math.inf))


def normal_form(tokenizer: Tokenizer, query: str) -> str:
    """`query` as the model reads it (the tokenizer's normalizer, e.g. NFKC)."""
    normalizer = tokenizer.normalizer
    return normalizer.normalize_str(query) if normalizer is not None else query


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
    scored: dict[str, float] = field(default_factory=dict)  # model logprob of index candidates
    seen: bool = False


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


def build_cases(engine: Offline, index: PopularIndex | None, queries: list[str]) -> list[Case]:
    """The candidates of every query's prefix, through the serving engine (with no index: the
    model's alone)."""
    model = engine.model
    tokenizer = model.tokenizer
    split = [split_text(q) for q in (normal_form(tokenizer, raw) for raw in queries) if q]
    beams = suggestions(engine, [prefix for prefix, _ in split])
    cases, pending = [], []  # pending: (case, completion, token ids from [BOS], prefix length)
    for (prefix, target), beam in zip(split, beams, strict=True):
        mpc = [c for c, _ in index.completions(prefix, k=CANDIDATES)] if index else []
        lo, hi = index.prefix_range(prefix) if index else (0, 0)
        case = Case(prefix, target, mpc, beam, dict(beam), lo < hi)
        prefix_ids = [model.bos_id, *tokenizer.encode(prefix).ids]
        pending += [(case, c, [*prefix_ids, *tokenizer.encode(c).ids, model.eos_id],
                     len(prefix_ids)) for c in mpc if c not in case.scored]  # fmt: skip
        cases.append(case)
    logprobs = engine.logprobs([ids for _, _, ids, _ in pending],
                               start=[n for _, _, _, n in pending])  # fmt: skip
    for (case, completion, _, _), logprob in zip(pending, logprobs, strict=True):
        case.scored[completion] = logprob
    for case in cases:
        case.scored = {c: case.scored[c] for c in case.mpc}
    return cases


def model_mrr(cases: list[Case]) -> float:
    """MRR@10 of the model's suggestions alone."""
    return sum(_reciprocal([c for c, _ in case.beam], case.target) for case in cases) / max(
        len(cases), 1
    )


def bundle_index(model: LoadedModel) -> PopularIndex | None:
    """The bundle's popular-query index (None: it has none)."""
    popular = model.bundle.manifest.popular
    if not popular.file:
        return None
    return PopularIndex.load(model.bundle.path / popular.file,
                             sha256=model.bundle.manifest.sha256.get(popular.file, ""))  # fmt: skip


def ranked(case: Case, index: PopularIndex, weights: RankingWeights) -> list[str]:
    """The served ranking's top `K` completions for the case."""
    found = rank(index, case.prefix, case.beam, weights, n=K, index_k=CANDIDATES,
                 model_logprobs=case.scored)  # fmt: skip
    return [s.completion for s in found]


def _reciprocal(candidates: list[str], target: str) -> float:
    top = candidates[:K]
    return 1.0 / (top.index(target) + 1) if target in top else 0.0


def fit(cases: list[Case], index: PopularIndex) -> tuple[RankingWeights, float]:
    """The weights of the best validation MRR@10 over a grid (the model's weight fixed at 1:
    only the ratio matters), and that MRR."""
    floor = -math.log(max(index.total_count, 1))  # ln(1 / total): the rarest query's
    tables = []  # per case: (model logprobs, log-popularity or NaN, index of the target or -1)
    for case in cases:
        texts = [c for c in dict.fromkeys([*case.mpc, *(c for c, _ in case.beam)]) if c]
        logprob = {**case.scored, **dict(case.beam)}
        counts = np.array([index.count(case.prefix + c) for c in texts], dtype=float)
        popularity = np.where(counts > 0, np.log(np.maximum(counts, 1)) + floor, np.nan)
        target = texts.index(case.target) if case.target in texts else -1
        tables.append((np.array([logprob[c] for c in texts]), popularity, target))
    best = (-1.0, RankingWeights())
    for b in POPULARITY_WEIGHTS:
        for offset in UNSEEN_OFFSETS:
            unseen = floor + offset
            total = 0.0
            for lp, pop, target in tables:
                if target < 0:
                    continue
                scores = lp + b * np.where(np.isnan(pop), unseen, pop)
                place = int((scores > scores[target]).sum())
                total += 1.0 / (place + 1) if place < K else 0.0
            mrr = total / max(len(tables), 1)
            if mrr > best[0]:
                best = (mrr, RankingWeights(1.0, b, unseen, _typical_logprob(cases)))
    return best[1], best[0]


def _typical_logprob(cases: list[Case]) -> float:
    """The median model log-probability of index candidates: the stand-in for one the serving
    side did not score."""
    values = [v for case in cases for v in case.scored.values()]
    return float(np.median(values)) if values else -30.0


def report(cases: list[Case], index: PopularIndex, weights: RankingWeights) -> dict[str, float]:
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
    """Write the popular-query index of the run's training log into the staged bundle, fit the
    ranking weights on (up to `--eval-completions` of) its validation queries through the staged
    graphs, and record both in `manifest.popular`."""
    from trainer.tasks import get_task

    train, valid, _ = get_task("autocomplete").load_raw(cfg)
    model = open_model(staging, staged=manifest)
    counts = query_counts(train, model.tokenizer)
    index = PopularIndex.build(counts, max_queries=cfg.popular_max_queries)
    index.save(staging / INDEX_FILE)
    cases = build_cases(Offline(model), index, list(valid)[: cfg.eval_completions])
    weights, mrr = fit(cases, index) if cases else (RankingWeights(), 0.0)
    manifest.popular.CopyFrom(
        bundle_pb2.PopularIndex(
            file=INDEX_FILE, queries=len(index), total_count=index.total_count,
            log_queries=len(counts),
            ranking=bundle_pb2.RankingWeights(
                model_weight=weights.model_weight, popularity_weight=weights.popularity_weight,
                unseen_log_popularity=weights.unseen_log_popularity,
                unscored_logprob=weights.unscored_logprob, fit_queries=len(cases),
                fit_mrr_at_10=mrr, candidates=CANDIDATES,
            ),
        )
    )  # fmt: skip


def weights_of(manifest: bundle_pb2.BundleManifest) -> RankingWeights:
    """The manifest's ranking weights."""
    r = manifest.popular.ranking
    return RankingWeights(r.model_weight, r.popularity_weight, r.unseen_log_popularity,
                          r.unscored_logprob)  # fmt: skip
