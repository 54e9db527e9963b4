"""int8 export: the quantized graphs load and run, are reported, and a quality drop refuses."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from services.bundle import verify
from services.offline import open_model
from tests.conftest import untrained_checkpoint
from trainer.checkpoint import save
from trainer.evaluate import evaluate
from trainer.export import ExportError, export_checkpoint
from trainer.export_cli import main

ANY_DROP = 1e9  # a tolerance no drop exceeds: accept whatever the untrained model does
# What int8 may cost a trained model: a point of accuracy, a hundredth of a nat per token.
TRAINED_DROP = 0.01


def op_counts(path: Path) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def checkpoint_examples_of(task: str) -> list[object]:
    from trainer.data.builtin import BUILTIN

    return list(BUILTIN[task](seed=0).valid)


@pytest.mark.parametrize(
    ("task", "cell", "role", "quantized_op", "reason"),
    [
        ("autocomplete", "lstm", "lm_step", "DynamicQuantizeLSTM", "LSTM weights are int8"),
        ("sentiment", "gru", "classifier_step", "MatMulInteger", "no int8 GRU: the head only"),
        ("translation", "elman", "decoder_step", "MatMulInteger", "projections and attention"),
    ],
)
def test_a_quantized_bundle_loads_and_runs(
    tmp_path: Path, task: str, cell: str, role: str, quantized_op: str, reason: str
) -> None:
    checkpoint = untrained_checkpoint(task, cell)
    bundle = export_checkpoint(
        checkpoint, out=tmp_path, name=task, quantize="int8", max_quality_drop=ANY_DROP
    )
    manifest = verify(bundle).manifest  # the service's checks: every int8 file is hashed
    spec = next(g for g in manifest.graphs if g.role == role)
    assert spec.quantized_file == f"{role}.int8.onnx" and spec.quantized_file in manifest.sha256
    assert op_counts(bundle / spec.quantized_file)[quantized_op] >= 1, reason
    report = manifest.quantization
    assert report.scheme == "int8-dynamic" and report.step_role == role
    assert 0 < report.size_ratio < 1 and report.step_latency_ratio > 0
    assert report.delta == pytest.approx(
        (report.fp32_value - report.int8_value) * (1 if report.higher_is_better else -1)
    )
    assert report.examples > 0 and report.max_quality_drop == ANY_DROP
    int8 = evaluate(open_model(bundle, graphs="int8"), checkpoint_examples_of(task)[:8])
    assert int8["examples"] == 8


@pytest.mark.parametrize(
    ("task", "metric", "learned"),
    [
        ("sentiment", "accuracy", lambda value: value > 0.55),  # above the majority label
        ("autocomplete", "nats_per_token", lambda value: value < 3.3),  # uniform: ln 37 = 3.61
    ],
)
def test_int8_costs_a_trained_model_little(
    tiny_models: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    task: str,
    metric: str,
    learned: Callable[[float], bool],
) -> None:
    """The session's tiny trained models exported with `--quantize int8` under a real tolerance:
    the gate passes because int8 keeps what the model learned, measured on its validation split."""
    (run,) = (tiny_models.parent / "runs").glob(f"{task}-*")
    out = tmp_path / "models"
    argv = ["--checkpoint", str(run), "--out", str(out), "--quantize", "int8"]
    main([*argv, "--max-quality-drop", str(TRAINED_DROP)])
    assert f"int8: {metric}" in capsys.readouterr().out
    report = verify(out / task / "1").manifest.quantization
    assert report.metric == metric and report.examples >= 100
    assert learned(report.fp32_value), f"the fp32 model learned something: {report.fp32_value}"
    assert report.delta <= TRAINED_DROP and abs(report.int8_value - report.fp32_value) <= 0.05


def test_lstm_graphs_shrink_to_under_half(tmp_path: Path) -> None:
    """int8 LSTM weights: the lm_step graph of an LSTM is well under half its fp32 size."""
    bundle = export_checkpoint(
        untrained_checkpoint("autocomplete", "lstm"),
        out=tmp_path,
        name="ac",
        quantize="int8",
        max_quality_drop=ANY_DROP,
    )
    report = json.loads((bundle / "manifest.json").read_text())["quantization"]
    assert report["size_ratio"] < 0.5 and report["metric"] == "nats_per_token"


def test_a_drop_beyond_the_tolerance_refuses_and_writes_nothing(tmp_path: Path) -> None:
    """A negative tolerance cannot be met by an unchanged metric: refused, naming the numbers."""
    with pytest.raises(ExportError) as refusal:
        export_checkpoint(
            untrained_checkpoint("sentiment"),
            out=tmp_path,
            name="s",
            quantize="int8",
            max_quality_drop=-1.0,
        )
    message = str(refusal.value)
    assert "accuracy" in message and "--max-quality-drop -1" in message
    assert "no bundle written" in message
    assert list((tmp_path / "s").iterdir()) == []  # no version, no staging leftovers


def test_cli_quantizes_refuses_and_needs_a_tolerance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save(untrained_checkpoint("sentiment", "lstm"), run / "checkpoint.pt")
    argv = ["--checkpoint", str(run), "--out", str(tmp_path / "models"), "--quantize", "int8"]
    with pytest.raises(SystemExit) as missing:
        main(argv)
    assert missing.value.code == 2 and "--max-quality-drop" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--max-quality-drop", "-1"])
    assert refused.value.code == 1 and "costs" in capsys.readouterr().err
    assert not any((tmp_path / "models" / "sentiment").iterdir())
    main([*argv, "--max-quality-drop", "1"])
    out = capsys.readouterr().out
    assert "wrote" in out and "int8: accuracy" in out
