"""Translation's decoding defaults: the service's beam search through the bundle's graphs, batched
across sources, re-ranked for every length penalty, and the fit recorded in the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.decoding import BeamSearch, Hypothesis, log_softmax
from tests.conftest import untrained_checkpoint
from trainer import beam_defaults
from trainer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from trainer.evaluate import evaluate
from trainer.export import export_checkpoint
from trainer.ort_bundle import OrtBundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkpoint = untrained_checkpoint("translation")
    checkpoint["config"] = {**checkpoint["config"], "fit_decoding_pairs": 12}
    out = tmp_path_factory.mktemp("models")
    return export_checkpoint(checkpoint, out=out, name="tr", fit_decoding=True)


def one_search(model: OrtBundle, src: list[int], *, beam: int, alpha: float) -> BeamSearch:
    """The service's search for one source, stepped one call at a time."""
    encoded = model.run("encoder", {"src": np.array([src]), "src_len": np.array([len(src)])})
    state = model.encoder_state(encoded)
    search = BeamSearch(size=beam, eos_id=EOS_ID, max_len=2 * len(src) + 10, alpha=alpha)
    while not search.done:
        n = len(search.live)
        prev = np.array([[h.tokens[-1] if h.tokens else BOS_ID] for h in search.live])
        fixed = {"memory": np.repeat(encoded["memory"], n, axis=0),
                 "src_mask": np.ones((n, len(src)), dtype=bool)}  # fmt: skip
        out = model.run("decoder_step", {"prev": prev, **state, **fixed})
        logprobs = log_softmax(out["logits"].astype(np.float64))
        logprobs[:, [PAD_ID, BOS_ID]] = -np.inf
        parents = search.advance(logprobs)
        state = {k: v[:, parents] for k, v in model.next_state(out).items()}
    return search


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_batched_search_and_reranking_equal_the_service_search(bundle: Path, alpha: float) -> None:
    """What the service would return with `alpha`, for sources of different lengths searched
    together (padding must not change a result)."""
    model = OrtBundle.load(bundle)
    sources = [model.tokenizer.encode(t).ids for t in ("a big house", "the cat", "hello there")]
    found = beam_defaults.hypotheses(model, sources, beam=3)
    for src, hyps in zip(sources, found, strict=True):
        expected = one_search(model, src, beam=3, alpha=alpha).ranked()[0]
        assert beam_defaults.pick(hyps, alpha) == list(expected.tokens)


def test_pick_by_length_penalty() -> None:
    short = Hypothesis((5,), (-2.0,), -2.0, 0.0, True)  # 2 tokens with [EOS]
    long = Hypothesis((5, 6, 7, 8, 9), (-0.5,) * 5, -3.0, 0.0, True)  # 6 with [EOS]
    assert beam_defaults.pick([short, long], 0.0) == [5], "total log-probability"
    # ((5 + 2) / 6)^1 = 1.167: -1.71; ((5 + 6) / 6)^1 = 1.833: -1.64
    assert beam_defaults.pick([short, long], 1.0) == [5, 6, 7, 8, 9], "normalized by length"


def test_fit_is_recorded_and_reported(bundle: Path) -> None:
    model = OrtBundle.load(bundle)
    defaults = model.manifest.decoding
    assert defaults.fit_pairs == 12
    assert defaults.beam_size in beam_defaults.BEAM_SIZES
    assert defaults.length_penalty in beam_defaults.ALPHAS
    assert defaults.valid_bleu >= defaults.valid_bleu_unpenalized
    pairs = [("a big house", "ein großes haus"), ("the cat", "die katze")]
    got = evaluate(model, pairs)
    assert got["default_beam_size"] == defaults.beam_size
    assert got["length_ratio_default"] > 0 and got["length_ratio_unpenalized"] > 0


def test_no_fit_unless_asked(tmp_path: Path) -> None:
    path = export_checkpoint(untrained_checkpoint("translation"), out=tmp_path, name="tr")
    assert not OrtBundle.load(path).manifest.HasField("decoding")


def test_score_is_sacrebleu_with_the_length_ratio() -> None:
    scored = beam_defaults.score(["a b c d"], ["a b c d e f g h"])
    assert scored.length_ratio == pytest.approx(0.5)
    assert beam_defaults.score(["a b c d"], ["a b c d"]).bleu == pytest.approx(100.0)


def test_width_one_at_alpha_zero_is_greedy(bundle: Path) -> None:
    from trainer.evaluate import greedy_translate

    model = OrtBundle.load(bundle)
    sources = [model.tokenizer.encode(t).ids for t in ("a big house", "the cat", "hello there")]
    found = beam_defaults.hypotheses(model, sources, beam=1)
    for src, hyps in zip(sources, found, strict=True):
        greedy = greedy_translate(model, [src], max_len=2 * len(src) + 10)[0]
        assert beam_defaults.pick(hyps, 0.0) == greedy
