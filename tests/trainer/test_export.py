"""ONNX export: parity with PyTorch for every graph, the manifest, and refusal on a mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import untrained_checkpoint
from trainer.data.tokenizer import BOS_ID, EOS_ID
from trainer.export import PARITY_SHAPES, ExportError, export_checkpoint, rebuild_model
from trainer.models.recurrent import CELLS, state_names
from trainer.models.seq2seq import greedy_decode, source_mask

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
    assert set(manifest["sha256"]) == graph_files | {"tokenizer.json"}
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


def ort_session(bundle: Path, role: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / f"{role}.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("cell", ["lstm", "jordan"])
@pytest.mark.parametrize(("batch", "length"), PARITY_SHAPES)
def test_step_graphs_match_pytorch(tmp_path: Path, batch: int, length: int, cell: str) -> None:
    """Logits and states of the LM and classifier graphs at every checked shape (max |Δ| ≤ 1e-4)."""
    for task, role in (("autocomplete", "lm_step"), ("sentiment", "classifier_step")):
        checkpoint = untrained_checkpoint(task, cell)
        bundle = export_checkpoint(checkpoint, out=tmp_path, name=task)
        model = rebuild_model(checkpoint)
        tokens = torch.randint(4, model.cfg.vocab_size, (batch, length))
        state = tuple(torch.randn_like(s) for s in model.init_hidden(batch))
        with torch.no_grad():
            logits, state_out = model(tokens, state)
        feeds = {"tokens": tokens.numpy()} | {
            name: s.numpy() for name, s in zip(state_names(cell), state, strict=True)
        }
        got = ort_session(bundle, role).run(None, feeds)
        for want, have in zip((logits, *state_out), got, strict=True):
            assert np.abs(have - want.numpy()).max() <= 1e-4


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_greedy_translation_through_onnx_equals_pytorch(tmp_path: Path, cell: str) -> None:
    """Greedy decoding with the encoder + decoder_step graphs yields PyTorch's exact tokens."""
    checkpoint = untrained_checkpoint("translation", cell)
    bundle = export_checkpoint(checkpoint, out=tmp_path, name="translation")
    model = rebuild_model(checkpoint)
    encoder, decoder = ort_session(bundle, "encoder"), ort_session(bundle, "decoder_step")
    torch.manual_seed(1)
    for length in (3, 8):
        src = torch.randint(4, model.cfg.vocab_size, (4, length))
        src_len = torch.tensor([length, 2, length - 1, 1])
        expected = greedy_decode(model, src, src_len, bos_id=BOS_ID, eos_id=EOS_ID, max_len=12)
        memory, *state = encoder.run(None, {"src": src.numpy(), "src_len": src_len.numpy()})
        names = state_names(cell)
        mask = source_mask(src, src_len).numpy()
        prev = np.full((4, 1), BOS_ID, dtype=np.int64)
        outputs: list[list[int]] = [[] for _ in range(4)]
        done = np.zeros(4, dtype=bool)
        for _ in range(12):
            feeds = {"prev": prev, "memory": memory, "src_mask": mask}
            logits, *state, _ = decoder.run(None, feeds | dict(zip(names, state, strict=True)))
            prev = logits.argmax(1).reshape(4, 1).astype(np.int64)
            for i, token in enumerate(prev[:, 0]):
                if not done[i] and token != EOS_ID:
                    outputs[i].append(int(token))
            done |= prev[:, 0] == EOS_ID
        assert outputs == expected


def test_export_refuses_a_mismatch_and_writes_nothing(tmp_path: Path) -> None:
    """A tolerance no graph can meet makes the export refuse, naming the graph and output."""
    with pytest.raises(ExportError, match=r"classifier_step: output 'logits' differs"):
        export_checkpoint(untrained_checkpoint("sentiment"), out=tmp_path, name="s", tolerance=-1.0)
    assert list((tmp_path / "s").iterdir()) == []  # no version, no staging leftovers
