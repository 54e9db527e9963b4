"""Translation's decoding defaults: every width and length penalty measured on what the service
streams with it (one served search per width, re-ranked per penalty), and the fit recorded in
the manifest and reproduced by recur-eval."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from services.decoding import Hypothesis
from services.offline import Offline, open_model
from services.requests import TranslateParams
from tests.conftest import untrained_checkpoint
from trainer import beam_defaults
from trainer.evaluate import checkpoint_examples, evaluate
from trainer.export import export_checkpoint

FIT_PAIRS = 12


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """A bundle with fitted defaults, and the validation pairs they were fit on."""
    checkpoint = untrained_checkpoint("translation")
    checkpoint.config = dataclasses.replace(checkpoint.config, fit_decoding_pairs=FIT_PAIRS)
    out = tmp_path_factory.mktemp("models")
    path = export_checkpoint(checkpoint, out=out, name="tr", fit_decoding=True)
    return path, checkpoint_examples(checkpoint)[:FIT_PAIRS]


def test_fit_is_recorded_and_reproduced_by_recur_eval(fitted: tuple[Path, list[Any]]) -> None:
    """recur-eval on the fit's own pairs serves the recorded defaults and finds the recorded
    BLEU: the fit measured what the service streams."""
    path, pairs = fitted
    model = open_model(path)
    defaults = model.bundle.manifest.decoding
    assert defaults.fit_pairs == FIT_PAIRS
    assert defaults.beam_size in beam_defaults.BEAM_SIZES
    assert defaults.length_penalty in beam_defaults.ALPHAS
    assert defaults.valid_bleu >= defaults.valid_bleu_unpenalized
    got = evaluate(model, pairs)
    assert got["default_beam_size"] == defaults.beam_size
    assert got["bleu_default"] == pytest.approx(defaults.valid_bleu)
    assert got["bleu_unpenalized"] == pytest.approx(defaults.valid_bleu_unpenalized)
    assert got["length_ratio_default"] == pytest.approx(defaults.valid_length_ratio)


def test_the_fit_keeps_the_best_setting_of_the_grid(fitted: tuple[Path, list[Any]]) -> None:
    path, pairs = fitted
    engine = Offline(open_model(path))
    sources, refs = beam_defaults._rows(engine.model, pairs)
    best = max(
        beam_defaults.score(beam_defaults.served(engine, sources, beam=b, alpha=a), refs).bleu
        for b in beam_defaults.BEAM_SIZES
        for a in (beam_defaults.ALPHAS if b > 1 else (0.0,))
    )
    assert engine.model.bundle.manifest.decoding.valid_bleu == pytest.approx(best)


def test_width_one_is_greedy_whatever_the_penalty(fitted: tuple[Path, list[Any]]) -> None:
    path, pairs = fitted
    engine = Offline(open_model(path))
    sources = [s for s, _ in pairs[:4]]
    greedy = TranslateParams(max_tokens=0, max_length_ratio=2.0, beam_size=1, length_penalty=0.0)
    expected = [o.final.text for o in engine.translate(sources, greedy) if o.final]
    assert beam_defaults.served(engine, sources, beam=1, alpha=1.5) == expected


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_reranked_hypotheses_are_what_the_service_streams(
    fitted: tuple[Path, list[Any]], alpha: float
) -> None:
    """One search to the end, re-ranked with `alpha`, picks what `Engine.translate` streams with
    that length penalty (sources of different lengths, searched together)."""
    path, _ = fitted
    engine = Offline(open_model(path))
    sources = ["a big house", "the cat", "hello there my friend"]
    found = engine.beam_hypotheses(sources, size=3)
    params = TranslateParams(max_tokens=0, max_length_ratio=2.0, beam_size=3, length_penalty=alpha)
    for hyps, streamed in zip(found, engine.translate(sources, params), strict=True):
        assert beam_defaults.pick(hyps, alpha) == [e.id for e in streamed.events]


def test_pick_by_length_penalty() -> None:
    short = Hypothesis((5,), (-2.0,), -2.0, 0.0, True)  # 2 tokens with [EOS]
    long = Hypothesis((5, 6, 7, 8, 9), (-0.5,) * 5, -3.0, 0.0, True)  # 6 with [EOS]
    assert beam_defaults.pick([short, long], 0.0) == [5], "total log-probability"
    # ((5 + 2) / 6)^1 = 1.167: -1.71; ((5 + 6) / 6)^1 = 1.833: -1.64
    assert beam_defaults.pick([short, long], 1.0) == [5, 6, 7, 8, 9], "normalized by length"


def test_no_fit_unless_asked(tmp_path: Path) -> None:
    path = export_checkpoint(untrained_checkpoint("translation"), out=tmp_path, name="tr")
    assert not open_model(path).bundle.manifest.HasField("decoding")


def test_score_is_sacrebleu_with_the_length_ratio() -> None:
    scored = beam_defaults.score(["a b c d"], ["a b c d e f g h"])
    assert scored.length_ratio == pytest.approx(0.5)
    assert beam_defaults.score(["a b c d"], ["a b c d"]).bleu == pytest.approx(100.0)
