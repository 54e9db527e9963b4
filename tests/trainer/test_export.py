"""ONNX export: parity with PyTorch for every graph, the manifest, and refusal on a mismatch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from trainer.config import TrainConfig
from trainer.data.tokenizer import BOS_ID, EOS_ID
from trainer.export import PARITY_SHAPES, ExportError, export_checkpoint, rebuild_model
from trainer.loop import make_checkpoint
from trainer.models.seq2seq import greedy_decode, source_mask
from trainer.tasks import get_task

GRAPHS = {
    "translation": ["encoder", "decoder_step"],
    "sentiment": ["classifier_step"],
    "autocomplete": ["lm_step"],
}


def untrained_checkpoint(task_name: str) -> dict[str, Any]:
    """A checkpoint of a small untrained model (random weights exercise parity as well)."""
    task = get_task(task_name)
    cfg = TrainConfig(
        task=task_name, embed_dim=16, hidden_size=24, num_layers=2, max_train_examples=200
    )
    data = task.prepare(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size()).eval()
    extra = {"metrics": {"valid_loss": 1.0}, "steps": 0, "epochs": 0, "wall_seconds": 0.0}
    return make_checkpoint(task, data, cfg, model, extra)


@pytest.mark.parametrize("task", list(GRAPHS))
def test_export_writes_a_verified_bundle(task: str, tmp_path: Path) -> None:
    bundle = export_checkpoint(untrained_checkpoint(task), out=tmp_path, name=task)
    assert bundle == tmp_path / task / "1"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [g["role"] for g in manifest["graphs"]] == GRAPHS[task]
    assert set(manifest["sha256"]) == {f"{g}.onnx" for g in GRAPHS[task]} | {"tokenizer.json"}
    for graph in manifest["graphs"]:
        parity = graph["parity"]
        assert parity["max_abs_diff"] <= parity["tolerance"] == 1e-4
        assert len(parity["sequence_lengths"]) >= 2 and parity["batch_sizes"] == [1, 4]
    assert manifest["state"] == [{"input": "h", "output": "h_out", "shape": ["2", "batch", "24"]}]
    assert manifest["training"]["metrics"] == {"valid_loss": 1.0}
    again = export_checkpoint(untrained_checkpoint(task), out=tmp_path, name=task)
    assert again.name == "2"  # versions count up


def ort_session(bundle: Path, role: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / f"{role}.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("batch", "length"), PARITY_SHAPES)
def test_step_graphs_match_pytorch(tmp_path: Path, batch: int, length: int) -> None:
    """Logits and states of the LM and classifier graphs at every checked shape (max |Δ| ≤ 1e-4)."""
    for task, role in (("autocomplete", "lm_step"), ("sentiment", "classifier_step")):
        checkpoint = untrained_checkpoint(task)
        bundle = export_checkpoint(checkpoint, out=tmp_path, name=task)
        model = rebuild_model(checkpoint)
        tokens = torch.randint(4, model.cfg.vocab_size, (batch, length))
        h = torch.randn(model.cfg.num_layers, batch, model.cfg.hidden_size)
        with torch.no_grad():
            logits, (h_out,) = model(tokens, (h,))
        got = ort_session(bundle, role).run(None, {"tokens": tokens.numpy(), "h": h.numpy()})
        assert np.abs(got[0] - logits.numpy()).max() <= 1e-4
        assert np.abs(got[1] - h_out.numpy()).max() <= 1e-4


def test_greedy_translation_through_onnx_equals_pytorch(tmp_path: Path) -> None:
    """Greedy decoding with the encoder + decoder_step graphs yields PyTorch's exact tokens."""
    checkpoint = untrained_checkpoint("translation")
    bundle = export_checkpoint(checkpoint, out=tmp_path, name="translation")
    model = rebuild_model(checkpoint)
    encoder, decoder = ort_session(bundle, "encoder"), ort_session(bundle, "decoder_step")
    torch.manual_seed(1)
    for length in (3, 8):
        src = torch.randint(4, model.cfg.vocab_size, (4, length))
        src_len = torch.tensor([length, 2, length - 1, 1])
        expected = greedy_decode(model, src, src_len, bos_id=BOS_ID, eos_id=EOS_ID, max_len=12)
        memory, h = encoder.run(None, {"src": src.numpy(), "src_len": src_len.numpy()})
        mask = source_mask(src, src_len).numpy()
        prev = np.full((4, 1), BOS_ID, dtype=np.int64)
        outputs: list[list[int]] = [[] for _ in range(4)]
        done = np.zeros(4, dtype=bool)
        for _ in range(12):
            logits, h, _ = decoder.run(
                None, {"prev": prev, "h": h, "memory": memory, "src_mask": mask}
            )
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
