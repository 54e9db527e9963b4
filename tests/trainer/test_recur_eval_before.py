"""Issue 16, one copy of decoding: `recur-eval` now runs the serving engine, and gives the figures
the trainer's own ONNX Runtime decoding gave before on the same bundles.

`recur_eval_before.json` holds what the old code (trainer/ort_bundle.py, trainer/evaluate.py's
greedy, beam and pooling, trainer/completions.py, at commit 699c50b) reported for the three tiny
bundles of `tests/conftest.py` (trained deterministically), with the digests of the graphs,
tokenizers and index they were computed on and the fits in their manifests. A test that finds
other bundles fails and says so, rather than comparing figures of different models.
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
    fits = {key: manifest[key] for key in before["fits"]}
    assert (same_model, fits) == (before["graphs"], before["fits"]), (
        "the tiny bundles are not the ones the old figures belong to (did training or the "
        "export change?); the comparison only holds on the same bundles"
    )
    main(["--bundle", str(bundle), "--data", "builtin"])
    got = json.loads(capsys.readouterr().out)["metrics"]
    assert got.keys() == before["metrics"].keys()
    for name, value in before["metrics"].items():
        assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
