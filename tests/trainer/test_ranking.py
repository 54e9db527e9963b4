"""Autocomplete's generate-then-rank on the trainer side: the popular-query index in the bundle,
the model's scores of index completions, the fit of the ranking weights and the QAC report
(trainer/ranking.py), with the model's suggestions and scores from the serving engine."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from services.bundle import verify
from services.decoding import SamplingParams
from services.offline import Offline, open_model
from services.popular import Lent, PopularIndex, RankingWeights, query_suffixes
from services.requests import CompleteParams
from tests.conftest import untrained_checkpoint
from trainer import ranking
from trainer.config import TrainConfig
from trainer.evaluate import evaluate
from trainer.export import export_checkpoint
from trainer.tasks import get_task


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkpoint = untrained_checkpoint("autocomplete")
    return export_checkpoint(checkpoint, out=tmp_path_factory.mktemp("models"), name="ac")


def test_the_index_is_a_verified_file_of_the_bundle(bundle: Path) -> None:
    manifest = verify(bundle).manifest  # the service's check: every file listed and hashed
    popular = manifest.popular
    assert popular.file == "popular.npz" and popular.file in manifest.sha256
    index = PopularIndex.load(bundle / popular.file, sha256=manifest.sha256[popular.file])
    train, _, _ = get_task("autocomplete").load_raw(TrainConfig(task="autocomplete"))
    model = open_model(bundle)
    counts = ranking.query_counts(train, model.tokenizer)
    assert len(index) == popular.queries == popular.log_queries == len(counts)
    assert popular.total_count == sum(counts.values()) == index.total_count
    query, count = counts.most_common(1)[0]
    assert index.count(query) == count
    weights = popular.ranking
    assert weights.model_weight == 1.0
    assert weights.popularity_weight in ranking.POPULARITY_WEIGHTS
    # each validation prefix fits the weights that serve it (200: --eval-completions)
    assert weights.fit_queries + popular.suffix_ranking.fit_queries == 200
    assert popular.suffix_ranking.fit_queries > 0
    assert popular.suffix_file == "suffixes.npz" and popular.suffix_file in manifest.sha256
    suffixes = PopularIndex.load(bundle / popular.suffix_file,
                                 sha256=manifest.sha256[popular.suffix_file])  # fmt: skip
    endings = query_suffixes(counts)
    assert len(suffixes) == popular.suffixes == len(endings)
    ending, count = endings.most_common(1)[0]
    assert suffixes.count(ending) == count


def test_no_index_when_asked_for_none(tmp_path: Path) -> None:
    checkpoint = untrained_checkpoint("autocomplete")
    checkpoint.config = dataclasses.replace(checkpoint.config, popular_max_queries=0)
    path = export_checkpoint(checkpoint, out=tmp_path, name="ac")
    manifest = verify(path).manifest
    assert not manifest.HasField("popular") and "popular.npz" not in manifest.sha256


def test_index_completions_are_scored_as_the_model_decodes_them(bundle: Path) -> None:
    """Teacher forcing through the served prompt reading gives a streamed completion the
    log-probability the served decoding gave its tokens (so index and beam candidates rank
    alike)."""
    engine = Offline(open_model(bundle))
    model = engine.model
    params = CompleteParams(max_tokens=6, sampling=SamplingParams(temperature=0.0))
    (streamed,) = engine.complete(["flights fr"], params)
    tokens = [event.id for event in streamed.events]
    prefix = [model.bos_id, *model.tokenizer.encode("flights fr").ids]
    (score,) = engine.logprobs([[*prefix, *tokens]], start=[len(prefix)])
    assert len(tokens) == 6
    assert score == pytest.approx(sum(e.logprob for e in streamed.events), abs=1e-4)
    assert engine.logprobs([], start=[]) == []


def _case(prefix: str, target: str, index: PopularIndex, beam: list[tuple[str, float]],
          scored: dict[str, float]) -> ranking.Case:  # fmt: skip
    mpc = [c for c, _ in index.completions(prefix, k=ranking.CANDIDATES)]
    lo, hi = index.prefix_range(prefix)
    return ranking.Case(prefix, target, mpc, beam, {c: scored[c] for c in mpc}, lo < hi)


INDEX = PopularIndex.build({"cheap flights": 50, "cheap hotels": 10, "chess": 5})
CASES = [
    # seen prefix, the popular query is right, the model prefers another
    _case("che", "ap flights", INDEX, [("ss", -1.0), ("ap hotels", -2.0)],
          {"ap flights": -3.0, "ap hotels": -2.0, "ss": -1.0}),
    # seen prefix, the model is right and popularity agrees
    _case("ch", "eap flights", INDEX, [("eap flights", -1.0), ("at", -1.5)],
          {"eap flights": -1.0, "eap hotels": -5.0, "ess": -6.0}),
    # unseen prefix: only the model can answer
    _case("weather in paris", " today", INDEX, [(" today", -0.5), (" tomorrow", -1.0)], {}),
]  # fmt: skip


def test_fit_finds_weights_that_use_both_signals() -> None:
    weights, mrr = ranking.fit(CASES, INDEX)
    assert weights.popularity_weight > 0, "popularity puts 'cheap flights' first for 'che'"
    assert mrr == pytest.approx(1.0)
    assert [ranking.ranked(case, INDEX, ranking.Weights(weights))[0] for case in CASES] == [
        case.target for case in CASES]  # fmt: skip
    model_only, _ = ranking.fit([CASES[2]], INDEX)
    assert model_only.popularity_weight == 0.0, "the first grid point that is already perfect"


LENT_CASES = [
    # unseen prefixes: the right completion is lent by a popular ending matching two words; the
    # beam prefers short completions, and a one-word match lends a more popular wrong one
    ranking.Case("cheap tickets to par", "is", [], [("k", -0.5), ("ty", -1.0)],
                 {"is": -3.0, "ma": -2.5}, False,
                 [Lent("ma", 900, 1), Lent("is", 40, 2)]),
    ranking.Case("last minute flights to ber", "lin", [], [("t", -0.4), ("lin", -2.0)],
                 {"muda": -2.2}, False, [Lent("muda", 700, 1), Lent("lin", 30, 2)]),
]  # fmt: skip


def test_the_suffix_fit_ranks_lent_candidates() -> None:
    weights, mrr = ranking.fit_suffix(LENT_CASES, INDEX)
    assert mrr == pytest.approx(1.0)
    assert weights.fragment_weight > 0, "only the matched words tell the right ending"
    served = ranking.Weights(RankingWeights(), weights)
    assert [ranking.ranked(case, INDEX, served)[0] for case in LENT_CASES] == ["is", "lin"]
    alone, mrr = ranking.fit_suffix(LENT_CASES[1:], INDEX)
    assert mrr == pytest.approx(1.0), "one case: any weights that put 'lin' first"
    served_alone = ranking.Weights(RankingWeights(), alone)
    assert ranking.ranked(LENT_CASES[1], INDEX, served_alone)[0] == "lin"


@pytest.mark.parametrize(
    ("cases", "weights"),
    [
        (CASES, RankingWeights(1.0, 0.5, -8.0, -2.5, 0.1)),
        (CASES, RankingWeights(1.0, 0.0, -8.0, -2.5, 0.0)),
        (LENT_CASES, RankingWeights(0.5, 0.0, -8.0, -2.5, 0.2, 0.5, 1.0, -3.0)),
        (LENT_CASES, RankingWeights(0.0, 0.0, -8.0, -2.5, 0.0, 0.0, 0.0, 0.0)),  # all tied
    ],
)  # fmt: skip
def test_the_fit_measures_what_is_served(cases: list[ranking.Case],
                                         weights: RankingWeights) -> None:  # fmt: skip
    """The grid's vectorized MRR@10 is the MRR@10 of `popular.rank` itself, ties included."""
    served = ranking.report(cases, INDEX, ranking.Weights(weights, weights))
    assert ranking._Table(cases, INDEX).mrr(weights) == pytest.approx(
        served["ranked_mrr_at_10_all"]
    )


def test_report_by_system_and_class() -> None:
    weights = RankingWeights(1.0, 1.0, -math.log(INDEX.total_count) - 2, -10.0)
    got = ranking.report(CASES, INDEX, ranking.Weights(weights))
    assert got["qac_queries"] == 3
    assert got["qac_seen_share"] == pytest.approx(2 / 3)
    assert got["qac_len_1_3_share"] == pytest.approx(2 / 3)  # "che", "ch"
    assert got["qac_len_9_plus_share"] == pytest.approx(1 / 3)
    # the model alone: 'ss' before 'ap hotels' and no 'ap flights'; 1st; 1st
    assert got["model_mrr_at_10_all"] == pytest.approx(2 / 3)
    assert got["model_success_at_1_seen"] == pytest.approx(1 / 2)
    # MPC: 1st, 1st, nothing for the unseen prefix
    assert got["mpc_mrr_at_10_seen"] == pytest.approx(1.0)
    assert got["mpc_mrr_at_10_unseen"] == 0.0
    assert got["mpc_success_at_10_all"] == pytest.approx(2 / 3)
    assert got["ranked_mrr_at_10_all"] == pytest.approx(1.0)
    assert got["ranked_success_at_1_len_9_plus"] == 1.0


def test_recur_eval_reports_the_ranked_system(bundle: Path) -> None:
    model = open_model(bundle)
    queries = ["flights from boston to rome", "cheap hotels in paris", "x"]
    got = evaluate(model, queries)
    assert got["qac_queries"] == 3
    for system in ("ranked", "model", "mpc"):
        for cls in ("all", "seen", "unseen", "len_1_3", "len_4_8", "len_9_plus"):
            assert 0.0 <= got[f"{system}_mrr_at_10_{cls}"] <= 1.0
    assert got["qac_len_1_3_share"] == pytest.approx(1 / 3)  # "x" is completed from "x"
    cases = ranking.build_cases(Offline(model), ranking.bundle_index(model), queries)
    assert [dataclasses.astuple(c)[:2] for c in cases][:2] == [
        ("flights from ", "boston to rome"), ("cheap hote", "ls in paris")]  # fmt: skip
