"""The parity matrix: every cell x task graph (and its ORT-optimized copy) against the PyTorch
model itself, at batch 1 and 5 and two or more lengths, and greedy decoding through ONNX Runtime
token for token equal to PyTorch's on validation examples.

The translation encoder is bidirectional (the only encoder Recur has): its backward direction
reverses each sequence within its own length, so batches mix source lengths.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from services.offline import Offline, open_model
from services.requests import TranslateParams
from tests.conftest import untrained_checkpoint
from trainer.checkpoint import Checkpoint
from trainer.data.builtin import BUILTIN
from trainer.data.tokenizer import BOS_ID, EOS_ID
from trainer.export import export_checkpoint, rebuild_model
from trainer.models.recurrent import CELLS, state_names
from trainer.models.seq2seq import greedy_decode, source_mask

SHAPES = ((1, 2), (1, 7), (5, 3), (5, 11))  # (batch, length): batch 1 and >= 4, lengths >= 2
TOLERANCE = 1e-4
COPIES = ("", ".opt")  # the exported graph and its ORT-optimized copy


def sessions(bundle: Path, role: str) -> list[ort.InferenceSession]:
    return [
        ort.InferenceSession(str(bundle / f"{role}{c}.onnx"), providers=["CPUExecutionProvider"])
        for c in COPIES
    ]


def assert_close(session: ort.InferenceSession, feeds: dict[str, Any], want: list[Any]) -> None:
    got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    assert len(got) == len(want)
    for have, expected in zip(got, want, strict=True):
        assert np.abs(have - expected.numpy()).max() <= TOLERANCE


@functools.cache
def checkpoint_of(task: str, cell: str) -> Checkpoint:
    return untrained_checkpoint(task, cell)  # read-only below: shared by a cell's tests


def exported(task: str, cell: str, tmp_path: Path) -> tuple[Any, Path]:
    checkpoint = checkpoint_of(task, cell)
    bundle = export_checkpoint(checkpoint, out=tmp_path, name=task)
    return rebuild_model(checkpoint), bundle


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    ("task", "role"), [("autocomplete", "lm_step"), ("sentiment", "classifier_step")]
)
def test_step_graphs_match_pytorch(tmp_path: Path, cell: str, task: str, role: str) -> None:
    model, bundle = exported(task, cell, tmp_path)
    torch.manual_seed(1)
    for batch, length in SHAPES:
        tokens = torch.randint(4, model.cfg.vocab_size, (batch, length))
        state = tuple(torch.randn_like(s) for s in model.init_hidden(batch))
        with torch.no_grad():
            logits, state_out = model(tokens, state)
        feeds = {"tokens": tokens, **dict(zip(state_names(cell), state, strict=True))}
        for session in sessions(bundle, role):
            assert_close(session, feeds, [logits, *state_out])


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_encoder_and_decoder_step_match_pytorch(tmp_path: Path, cell: str) -> None:
    model, bundle = exported("translation", cell, tmp_path)
    encoders, decoders = sessions(bundle, "encoder"), sessions(bundle, "decoder_step")
    torch.manual_seed(1)
    for batch, length in SHAPES:
        src = torch.randint(4, model.cfg.vocab_size, (batch, length))
        src_len = torch.randint(1, length + 1, (batch,))
        src_len[0] = length  # the longest row fills the padded width
        with torch.no_grad():
            memory, state = model.encoder(src, src_len)  # (B, S, 2H), (L, B, H)...
            prev = torch.randint(4, model.cfg.vocab_size, (batch, 1))
            mask = source_mask(src, src_len)
            logits, state_out, attention = model.decoder(prev, state, memory, mask)
        for session in encoders:
            assert_close(session, {"src": src, "src_len": src_len}, [memory, *state])
        feeds = {"prev": prev, **dict(zip(state_names(cell), state, strict=True))}
        feeds |= {"memory": memory, "src_mask": mask}
        for session in decoders:
            assert_close(session, feeds, [logits[:, 0], *state_out, attention[:, 0]])


def validation_sources(count: int) -> list[str]:
    return [src for src, _ in BUILTIN["translation"](seed=0).valid[:count]]


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_translation_through_onnx_equals_pytorch(tmp_path: Path, cell: str) -> None:
    """Validation sentences: the serving engine's greedy tokens are PyTorch's exactly (PyTorch
    decodes them as one padded batch)."""
    model, bundle = exported("translation", cell, tmp_path)
    runner = open_model(bundle)
    texts = validation_sources(6)
    sources = [runner.tokenizer.encode(text).ids for text in texts]
    src = torch.zeros(len(sources), max(map(len, sources)), dtype=torch.long)
    for i, ids in enumerate(sources):
        src[i, : len(ids)] = torch.tensor(ids)
    src_len = torch.tensor([len(ids) for ids in sources])
    expected = greedy_decode(model, src, src_len, bos_id=BOS_ID, eos_id=EOS_ID, max_len=15)
    params = TranslateParams(max_tokens=15, beam_size=1, length_penalty=0.0)
    served = Offline(runner).translate(texts, params)
    assert [[e.id for e in o.events] for o in served] == expected
    assert any(expected), "an all-empty decoding would prove nothing"


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_completion_through_onnx_equals_pytorch(tmp_path: Path, cell: str) -> None:
    """Validation query prefixes: a prefill then one-token steps, the way the service decodes."""
    model, bundle = exported("autocomplete", cell, tmp_path)
    runner = open_model(bundle)
    for query in BUILTIN["autocomplete"](seed=0).valid[:3]:
        prefix = [BOS_ID, *runner.tokenizer.encode(query[: len(query) // 2]).ids]
        ours, theirs = [], []
        tokens = np.array([prefix], dtype=np.int64)
        state_np, state_pt = runner.zero_state(1), model.init_hidden(1)
        tokens_pt = torch.tensor([prefix])
        for _ in range(8):
            out = runner.run("lm_step", {"tokens": tokens, **state_np})
            state_np = runner.next_state(out)
            with torch.no_grad():
                logits, state_pt = model(tokens_pt, state_pt)
            ours.append(int(out["logits"][0, -1].argmax()))
            theirs.append(int(logits[0, -1].argmax()))
            tokens, tokens_pt = np.array([[ours[-1]]]), torch.tensor([[theirs[-1]]])
        assert ours == theirs, query
