"""Network variants: attention scores, input feeding, sentiment pooling, tied LM embeddings; every
variant exports with ONNX Runtime parity."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from trainer.checkpoint import Checkpoint
from trainer.config import TrainConfig
from trainer.data.tokenizer import BOS_ID, EOS_ID, build_tokenizer
from trainer.export import export_checkpoint, rebuild_model
from trainer.loop import make_checkpoint
from trainer.models import Classifier, ClassifierConfig, LanguageModel, LanguageModelConfig
from trainer.models.recurrent import CELLS, state_names
from trainer.models.seq2seq import ATTENTIONS, Seq2Seq, Seq2SeqConfig, greedy_decode, source_mask
from trainer.tasks import TaskData, get_task

TEXTS = ["a dog runs", "un chien court", "the cat sleeps", "le chat dort"]


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def checkpoint_of(task_name: str, **overrides: Any) -> Checkpoint:
    """An untrained 2-layer model of `task_name` with `overrides`, as a checkpoint."""
    cfg = TrainConfig(task=task_name, embed_dim=12, hidden_size=12, num_layers=2, **overrides)
    task = get_task(task_name)
    tokenizer = build_tokenizer(task.default_tokenizer, TEXTS)
    data = TaskData(tokenizer, [], [], "test", labels=task.labels())
    torch.manual_seed(0)
    model = task.build_model(cfg, tokenizer.get_vocab_size()).eval()
    return make_checkpoint(task, data, cfg, model, metrics={"valid_loss": 1.0})


@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_every_decoder_variant_exports_with_parity(tmp_path: Path, cell: str, attention: str,
                                                   input_feeding: bool) -> None:  # fmt: skip
    checkpoint = checkpoint_of("translation", cell=cell, attention=attention,
                               input_feeding=input_feeding)  # fmt: skip
    bundle = export_checkpoint(checkpoint, out=tmp_path, name="t")
    assert (bundle / "decoder_step.onnx").is_file()  # written only when parity held
    assert rebuild_model(checkpoint).decoder.input_feeding == input_feeding


@pytest.mark.parametrize(
    ("task", "overrides"),
    [("sentiment", {"pooling": "mean"}), ("sentiment", {"pooling": "max"})]
    + [("autocomplete", {"tie_embeddings": True, "cell": cell}) for cell in CELLS],
)
def test_pooling_and_tied_variants_export_with_parity(
    tmp_path: Path, task: str, overrides: dict[str, Any]
) -> None:
    bundle = export_checkpoint(checkpoint_of(task, **overrides), out=tmp_path, name=task)
    assert len(list(bundle.glob("*_step.onnx"))) == 1


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("input_feeding", [False, True])
def test_one_step_at_a_time_equals_the_whole_target(attention: str, input_feeding: bool) -> None:
    """What makes a decoder exportable as `decoder_step`: stepping it token by token with only
    the recurrent state carried gives the teacher-forced logits (with input feeding too, since
    h~_{t-1} is recomputed from the state)."""
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(vocab_size=20, embed_dim=6, hidden_size=8, num_layers=2,
                                  cell="lstm", attention=attention,
                                  input_feeding=input_feeding)).eval()  # fmt: skip
    src, src_len = torch.randint(4, 20, (3, 7)), torch.tensor([7, 4, 2])
    prev = torch.randint(4, 20, (3, 5))
    memory, state = model.encoder(src, src_len)
    mask = source_mask(src, src_len)
    with torch.no_grad():
        whole, _, whole_attention = model.decoder(prev, state, memory, mask)
        steps = []
        for t in range(5):
            logits, state, weights = model.decoder(prev[:, t : t + 1], state, memory, mask)
            steps.append((logits, weights))
    assert torch.allclose(torch.cat([s[0] for s in steps], 1), whole, atol=1e-6)
    assert torch.allclose(torch.cat([s[1] for s in steps], 1), whole_attention, atol=1e-6)
    assert torch.allclose(whole_attention.sum(2), torch.ones(3, 5))
    assert whole_attention[2, :, 2:].abs().max() == 0  # padding gets no attention


def test_greedy_translation_through_onnx_with_input_feeding_and_additive_attention(
    tmp_path: Path,
) -> None:
    checkpoint = checkpoint_of("translation", cell="gru", attention="additive",
                               input_feeding=True)  # fmt: skip
    bundle = export_checkpoint(checkpoint, out=tmp_path, name="t")
    model = rebuild_model(checkpoint)
    sessions = {role: ort.InferenceSession(str(bundle / f"{role}.onnx"),
                                           providers=["CPUExecutionProvider"])
                for role in ("encoder", "decoder_step")}  # fmt: skip
    src, src_len = torch.randint(4, model.cfg.vocab_size, (2, 6)), torch.tensor([6, 3])
    expected = greedy_decode(model, src, src_len, bos_id=BOS_ID, eos_id=EOS_ID, max_len=8)
    memory, *state = sessions["encoder"].run(None, {"src": src.numpy(), "src_len": src_len.numpy()})
    fixed = {"memory": memory, "src_mask": source_mask(src, src_len).numpy()}
    prev, outputs, done = np.full((2, 1), BOS_ID), [[], []], [False, False]
    for _ in range(8):
        named = dict(zip(state_names("gru"), state, strict=True))
        feeds = {"prev": prev.astype(np.int64), **fixed, **named}
        logits, *state, _ = sessions["decoder_step"].run(None, feeds)
        prev = logits.argmax(1)[:, None]
        for i, token in enumerate(prev[:, 0].tolist()):
            done[i] = done[i] or token == EOS_ID
            if not done[i]:
                outputs[i].append(token)
    assert outputs == expected


def test_attention_scores_by_hand() -> None:
    """query (1, 1, 2) against one memory position (1, 1, 4): forward half [1, 2], backward
    half [3, 4]."""
    query, memory = torch.tensor([[[1.0, 0.5]]]), torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    decoders = {kind: Seq2Seq(Seq2SeqConfig(vocab_size=8, embed_dim=2, hidden_size=2,
                                            attention=kind)).decoder
                for kind in ATTENTIONS}  # fmt: skip
    # dot: q . (fwd + bwd) = [1, 0.5] . [4, 6]
    assert decoders["dot"]._scores(query, memory).item() == pytest.approx(7.0)
    general = decoders["general"]
    with torch.no_grad():
        general.attn.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))  # W k = [1, 4]
    assert general._scores(query, memory).item() == pytest.approx(1 * 1 + 0.5 * 4)
    additive = decoders["additive"]
    with torch.no_grad():
        additive.attn_query.weight.copy_(torch.eye(2))  # W q = [1, 0.5]
        additive.attn_key.weight.copy_(torch.tensor([[0.0, 0, 0, 0.1], [0, 0.1, 0, 0]]))
        additive.attn_key.bias.copy_(torch.tensor([0.0, -1.0]))  # U k + b = [0.4, -0.8]
        additive.attn_v.weight.copy_(torch.tensor([[2.0, 1.0]]))
    expected = 2 * math.tanh(1 + 0.4) + 1 * math.tanh(0.5 - 0.8)
    assert additive._scores(query, memory).item() == pytest.approx(expected)


def test_pooling_by_hand() -> None:
    """Two texts of lengths 2 and 3; position 2 of the first is padding (and larger, to show
    it is ignored)."""
    logits = torch.tensor([[[1.0, 4.0], [3.0, 0.0], [9.0, 9.0]],
                           [[0.0, 1.0], [2.0, 2.0], [4.0, -3.0]]])  # fmt: skip
    lengths = torch.tensor([2, 3])
    pooled = {p: Classifier(ClassifierConfig(vocab_size=8, pooling=p)).pool(logits, lengths)
              for p in ("last", "mean", "max")}  # fmt: skip
    assert pooled["last"].tolist() == [[3.0, 0.0], [4.0, -3.0]]
    assert pooled["mean"].tolist() == [[2.0, 2.0], [2.0, 0.0]]
    assert pooled["max"].tolist() == [[3.0, 4.0], [4.0, 2.0]]


@pytest.mark.parametrize("pooling", ["mean", "max"])
@pytest.mark.parametrize("prefix_loss", ["none", "linear"])  # the label only; every prefix
def test_pooled_sentiment_trains(pooling: str, prefix_loss: str) -> None:
    cfg = TrainConfig(task="sentiment", pooling=pooling, prefix_loss=prefix_loss, embed_dim=16,
                      hidden_size=16, max_train_examples=64, lr=1e-2)  # fmt: skip
    task = get_task("sentiment")
    data = task.prepare(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size())
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batch = task.collate(data.train[:32])
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss, _ = task.loss(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_tied_embeddings_share_one_matrix() -> None:
    def params(tie: bool) -> int:
        cfg = LanguageModelConfig(vocab_size=50, embed_dim=16, hidden_size=16,
                                  tie_embeddings=tie)  # fmt: skip
        model = LanguageModel(cfg)
        assert (model.decoder.weight is model.embed.weight) == tie
        return sum(p.numel() for p in model.parameters())

    assert params(False) - params(True) == 50 * 16
    checkpoint = checkpoint_of("autocomplete", tie_embeddings=True)
    rebuilt = rebuild_model(checkpoint)
    assert isinstance(rebuilt.decoder, nn.Linear) and rebuilt.decoder.weight is rebuilt.embed.weight


@pytest.mark.parametrize(
    ("argv", "message", "reason"),
    [
        (["--task", "autocomplete", "--tie-embeddings"],
         "--tie-embeddings needs --embed-dim equal to --hidden-size (got 32 and 192; the "
         "defaults are 32 and 192)", "the task's default sizes differ"),
        (["--task", "translation", "--pooling", "mean"], "--pooling applies to --task sentiment",
         "a flag of another task's network"),
        (["--task", "sentiment", "--input-feeding"],
         "--input-feeding applies to --task translation", "a flag of another task's network"),
        (["--task", "translation", "--attention", "cosine"],
         "--attention must be one of dot, general, additive", "no such attention"),
    ],
)  # fmt: skip
def test_bad_network_flags_exit_2(argv: list[str], message: str, reason: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from trainer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2, reason
    assert message in capsys.readouterr().err, reason
