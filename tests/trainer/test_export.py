"""ONNX export: every cell and task exports a checked bundle; versions; refusal on a mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import untrained_checkpoint
from trainer.export import ExportError, export_checkpoint
from trainer.models.recurrent import CELLS, state_names

GRAPHS = {
    "translation": ["encoder", "decoder_step"],
    "sentiment": ["classifier_step"],
    "autocomplete": ["lm_step"],
}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("task", list(GRAPHS))
def test_export_writes_a_verified_bundle(task: str, cell: str, tmp_path: Path) -> None:
    """Every cell and task exports; the export's own parity check passed at every checked shape."""
    bundle = export_checkpoint(untrained_checkpoint(task, cell), out=tmp_path, name=task)
    assert bundle == tmp_path / task / "1"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [g["role"] for g in manifest["graphs"]] == GRAPHS[task]
    graph_files = {f"{g}{suffix}" for g in GRAPHS[task] for suffix in (".onnx", ".opt.onnx")}
    index = {"popular.npz", "suffixes.npz"} if task == "autocomplete" else set()  # indexes
    assert set(manifest["sha256"]) == graph_files | {"tokenizer.json"} | index
    for graph in manifest["graphs"]:
        assert graph["optimized_file"] == f"{graph['role']}.opt.onnx"
        assert graph["optimization_level"] == "ORT_ENABLE_EXTENDED"
        for parity in (graph["parity"], graph["optimized_parity"]):
            assert parity["max_abs_diff"] <= parity["tolerance"] == 1e-4
            assert len(parity["sequence_lengths"]) >= 2 and parity["batch_sizes"] == [1, 4]
    assert manifest["cell"] == cell
    assert manifest["state"] == [
        {"input": name, "output": f"{name}_out", "shape": ["2", "batch", "24"]}
        for name in state_names(cell)
    ]
    assert manifest["training"]["metrics"] == {"valid_loss": 1.0}


def test_versions_count_up(tmp_path: Path) -> None:
    for version in ("1", "2"):
        bundle = export_checkpoint(untrained_checkpoint("sentiment"), out=tmp_path, name="s")
        assert bundle.name == version


def test_export_refuses_a_mismatch_and_writes_nothing(tmp_path: Path) -> None:
    """A tolerance no graph can meet makes the export refuse, naming the graph and output."""
    with pytest.raises(ExportError, match=r"classifier_step: output 'logits' differs"):
        export_checkpoint(untrained_checkpoint("sentiment"), out=tmp_path, name="s", tolerance=-1.0)
    assert list((tmp_path / "s").iterdir()) == []  # no version, no staging leftovers
