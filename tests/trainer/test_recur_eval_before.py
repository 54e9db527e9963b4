"""Issue 16, one copy of decoding: `recur-eval` now runs the serving engine, and gives the figures
the trainer's own ONNX Runtime decoding gave before on the same bundles.

`recur_eval_before.json` holds what the old code (trainer/ort_bundle.py, trainer/evaluate.py's
greedy, beam and pooling, trainer/completions.py, at commit 699c50b) reported for the three tiny
bundles of `tests/conftest.py` (trained deterministically), with the digests of the graphs,
tokenizers and index they were computed on and the fits in their manifests. A test that finds
other bundles fails and says so, rather than comparing figures of different models.

The autocomplete ranking has changed since (issue 18: the suffix index, a length term and a
second set of weights, fit on the prefixes each serves), so its `ranked_*` figures and its
ranking fits are not the old code's any more and are left out here; `tests/trainer/
test_ranking.py` holds the ranking to `popular.rank`. The model's and MPC's figures, which the
decoding alone decides, are still compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.eval_cli import main

BEFORE = json.loads((Path(__file__).parent / "recur_eval_before.json").read_text())


@pytest.mark.parametrize("task", ["sentiment", "translation", "autocomplete"])
def test_recur_eval_gives_the_figures_of_the_old_decoding(
    tiny_models: Path, task: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tiny_models / task / "1"
    manifest = json.loads((bundle / "manifest.json").read_text())
    before = BEFORE[task]
    same_model = {name: manifest["sha256"].get(name) for name in before["graphs"]}
    fits = {key: _decoding_fit(manifest[key]) for key in before["fits"]}
    before = {**before, "fits": {key: _decoding_fit(v) for key, v in before["fits"].items()}}
    assert (same_model, fits) == (before["graphs"], before["fits"]), (
        "the tiny bundles are not the ones the old figures belong to (did training or the "
        "export change?); the comparison only holds on the same bundles"
    )
    main(["--bundle", str(bundle), "--data", "builtin"])
    got = json.loads(capsys.readouterr().out)["metrics"]
    assert got.keys() == before["metrics"].keys()
    for name, value in before["metrics"].items():
        if not name.startswith(RANKED):
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


RANKED = "ranked_"  # the autocomplete ranking's figures (see the module docstring)


def _decoding_fit(fit: dict[str, object]) -> dict[str, object]:
    """A manifest fit without the autocomplete ranking's weights (see the module docstring)."""
    ranking = ("ranking", "suffix_file", "suffixes", "suffix_ranking")
    return {key: value for key, value in fit.items() if key not in ranking}
