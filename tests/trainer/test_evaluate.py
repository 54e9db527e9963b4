"""Task metrics through ONNX Runtime: equal to PyTorch's on the same data, perfect on memorized
examples, and computed from the bundle's own tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import untrained_checkpoint
from trainer.completions import complete
from trainer.config import TrainConfig
from trainer.evaluate import evaluate
from trainer.export import export_checkpoint, rebuild_model
from trainer.loop import make_checkpoint
from trainer.ort_bundle import OrtBundle
from trainer.tasks import get_task


def memorized(task_name: str, count: int, steps: int) -> tuple[dict[str, Any], list[Any]]:
    """A tiny model trained to memorize `count` training examples, and those raw examples."""
    cfg = TrainConfig(task=task_name, embed_dim=16, hidden_size=32, max_train_examples=200)
    task = get_task(task_name)
    data = task.prepare(cfg)
    raw = list(dict.fromkeys(task.load_raw(cfg)[0][:200]))[:count]  # distinct, in vocabulary
    torch.manual_seed(0)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size())
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    batch = task.collate(task.encode(raw, data.tokenizer))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: a second thread only adds contention
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            loss, _ = task.loss(model, batch)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    extra = {"metrics": {}, "steps": steps, "epochs": 1, "wall_seconds": 0.0}
    return make_checkpoint(task, data, cfg, model.eval(), extra), raw


@pytest.mark.parametrize(
    ("task", "count", "steps", "perfect", "reason"),
    [
        ("sentiment", 16, 25, {"accuracy": 1.0, "macro_f1": 1.0}, "labels of seen texts"),
        ("translation", 6, 80, {"bleu": 100.0, "exact_match": 1.0}, "memorized sentences"),
        ("autocomplete", 4, 80, {"mrr_at_10": 1.0}, "each query's own ending ranks first"),
    ],
)
def test_memorized_examples_score_perfectly(
    tmp_path: Path, task: str, count: int, steps: int, perfect: dict[str, float], reason: str
) -> None:
    checkpoint, raw = memorized(task, count, steps)
    bundle = export_checkpoint(checkpoint, out=tmp_path, name=task)
    metrics = evaluate(OrtBundle.load(bundle), raw)
    assert {k: metrics[k] for k in perfect} == pytest.approx(perfect), reason
    assert metrics["examples"] == count


@pytest.mark.parametrize(
    ("task", "ours", "theirs"),
    [
        ("sentiment", ("accuracy", "loss"), ("valid_accuracy", "valid_loss")),
        (
            "autocomplete",
            ("nats_per_token", "bits_per_char"),
            ("valid_loss", "valid_bits_per_char"),
        ),
        ("translation", ("exact_match",), ("valid_exact_match",)),
    ],
)
def test_metrics_through_onnx_equal_the_trainers_validation(
    tmp_path: Path, task: str, ours: tuple[str, ...], theirs: tuple[str, ...]
) -> None:
    """The same validation split through ORT and through the trainer's PyTorch evaluation."""
    checkpoint = untrained_checkpoint(task, "lstm")
    bundle = export_checkpoint(checkpoint, out=tmp_path, name=task)
    task_obj = get_task(task)
    data = task_obj.prepare(TrainConfig(task=task, max_train_examples=200), checkpoint["tokenizer"])
    data.valid, data.valid_raw = data.valid[:100], data.valid_raw[:100]
    expected = task_obj.evaluate(rebuild_model(checkpoint), data)
    got = evaluate(OrtBundle.load(bundle), list(data.valid_raw), completions=False)
    for mine, trainer_name in zip(ours, theirs, strict=True):
        assert got[mine] == pytest.approx(expected[trainer_name], abs=1e-4), mine


def test_int8_and_optimized_graphs_are_selectable(tmp_path: Path) -> None:
    bundle = export_checkpoint(untrained_checkpoint("sentiment"), out=tmp_path, name="s")
    examples = [("a great movie", 1), ("bad", 0)]
    fp32 = evaluate(OrtBundle.load(bundle), examples)
    assert evaluate(OrtBundle.load(bundle, variant="optimized"), examples) == pytest.approx(fp32)
    with pytest.raises(ValueError, match="has no int8 copy"):
        OrtBundle.load(bundle, variant="int8")


def test_beam_search_returns_distinct_completions_best_first(tmp_path: Path) -> None:
    bundle = export_checkpoint(untrained_checkpoint("autocomplete"), out=tmp_path, name="ac")
    model = OrtBundle.load(bundle)
    prefix = model.tokenizer.encode("wea").ids
    completions = complete(model, prefix, k=5, max_new=6)
    assert 1 <= len(completions) <= 5
    assert len({tuple(c) for c in completions}) == len(completions)


def test_beam_translation_through_onnx_is_the_trainers_beam_search(tmp_path: Path) -> None:
    """`recur-eval --beam-size` searches the graphs as the trainer's `valid_bleu_beam` searches
    the PyTorch model: the same hypotheses, token for token (a half-trained model, so the
    beams disagree with greedy decoding and with each other)."""
    from trainer.decoding import beam_translate as torch_beam
    from trainer.evaluate import beam_translate as ort_beam

    checkpoint, raw = memorized("translation", 6, 20)
    bundle = OrtBundle.load(export_checkpoint(checkpoint, out=tmp_path, name="t"))
    model = rebuild_model(checkpoint).eval()
    sources = [bundle.tokenizer.encode(s).ids for s, _ in raw]
    for src in sources:
        expected = torch_beam(model, src, beam=4, max_len=2 * len(src) + 10)
        assert ort_beam(bundle, src, beam=4, max_len=2 * len(src) + 10) == expected
    metrics = evaluate(bundle, raw, beam_size=4)
    assert 0.0 <= metrics["bleu_beam"] <= 100.0 and "bleu_beam" not in evaluate(bundle, raw)
