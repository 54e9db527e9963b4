"""Task metrics through the serving engine: equal to PyTorch's on the same data, perfect on
memorized examples, and computed from the bundle's own tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from services.errors import BundleError
from services.offline import Offline, open_model
from services.requests import TranslateParams
from tests.conftest import untrained_checkpoint
from trainer import ranking
from trainer.checkpoint import Checkpoint, Position
from trainer.config import TrainConfig
from trainer.evaluate import evaluate
from trainer.export import export_checkpoint, rebuild_model
from trainer.loop import make_checkpoint
from trainer.tasks import get_task


def memorized(task_name: str, count: int, steps: int) -> tuple[Checkpoint, list[Any]]:
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
    position = Position(epoch=1, steps=steps)
    return make_checkpoint(task, data, cfg, model.eval(), metrics={}, position=position), raw


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
    metrics = evaluate(open_model(bundle), raw)
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
    ],
)
def test_metrics_through_onnx_equal_the_trainers_validation(
    tmp_path: Path, task: str, ours: tuple[str, ...], theirs: tuple[str, ...]
) -> None:
    """The same validation split through ORT and through the trainer's PyTorch evaluation."""
    checkpoint = untrained_checkpoint(task, "lstm")
    bundle = export_checkpoint(checkpoint, out=tmp_path, name=task)
    task_obj = get_task(task)
    data = task_obj.prepare(TrainConfig(task=task, max_train_examples=200), checkpoint.tokenizer)
    data.valid, data.valid_raw = data.valid[:100], data.valid_raw[:100]
    expected = task_obj.evaluate(rebuild_model(checkpoint), data)
    got = evaluate(open_model(bundle), list(data.valid_raw), completions=False)
    for mine, trainer_name in zip(ours, theirs, strict=True):
        assert got[mine] == pytest.approx(expected[trainer_name], abs=1e-4), mine


def test_translation_metrics_through_onnx_equal_the_trainers(tmp_path: Path) -> None:
    """Exact match of a model that memorized half of the pairs it is scored on: between nothing
    and perfect (an untrained model scores 0 on both sides), the same through ORT and through
    the trainer's PyTorch evaluation. (Their BLEU differs: 27.5 vs 23.8 here.)"""
    checkpoint, seen = memorized("translation", 6, 80)
    task = get_task("translation")
    cfg = TrainConfig(task="translation", embed_dim=16, hidden_size=32, max_train_examples=200)
    data = task.prepare(cfg)  # memorized's data: the same tokenizer
    raw = seen + [pair for pair in data.valid_raw if pair not in seen][:6]
    data.valid, data.valid_raw = task.encode(raw, data.tokenizer), raw
    expected = task.evaluate(rebuild_model(checkpoint), data)
    got = evaluate(open_model(export_checkpoint(checkpoint, out=tmp_path, name="t")), raw)
    assert 0 < expected["valid_exact_match"] < 1 and 0 < expected["valid_bleu"] < 100, expected
    assert got["exact_match"] == pytest.approx(expected["valid_exact_match"])


def test_int8_and_optimized_graphs_are_selectable(tmp_path: Path) -> None:
    bundle = export_checkpoint(untrained_checkpoint("sentiment"), out=tmp_path, name="s")
    examples = [("a great movie", 1), ("bad", 0)]
    fp32 = evaluate(open_model(bundle), examples)
    assert evaluate(open_model(bundle, graphs="optimized"), examples) == pytest.approx(fp32)
    with pytest.raises(BundleError, match="has no int8 copy"):
        open_model(bundle, graphs="int8")


def test_served_suggestions_come_best_first(tmp_path: Path) -> None:
    bundle = export_checkpoint(untrained_checkpoint("autocomplete"), out=tmp_path, name="ac")
    (found,) = ranking.suggestions(Offline(open_model(bundle)), ["wea"], k=5)
    assert 1 <= len(found) <= 5
    logprobs = [logprob for _, logprob in found]
    assert logprobs == sorted(logprobs, reverse=True)


def test_beam_translation_is_reported_when_asked(tmp_path: Path) -> None:
    """`recur-eval --beam-size`: the served beam search of memorized sentences is perfect."""
    checkpoint, raw = memorized("translation", 6, 80)
    model = open_model(export_checkpoint(checkpoint, out=tmp_path, name="t"))
    metrics = evaluate(model, raw, beam_size=4, length_penalty=0.6)
    assert metrics["bleu_beam"] == pytest.approx(100.0)
    assert "bleu_beam" not in evaluate(model, raw)


def test_validation_beam_search_is_the_served_one(tmp_path: Path) -> None:
    """The trainer's `valid_bleu_beam` search on the PyTorch model finds what the service's beam
    search finds on the exported bundle, token for token (a half-trained model, so the beams
    disagree with greedy decoding and with each other)."""
    from trainer.decoding import beam_translate

    checkpoint, raw = memorized("translation", 6, 20)
    model = open_model(export_checkpoint(checkpoint, out=tmp_path, name="t"))
    torch_model = rebuild_model(checkpoint).eval()
    params = TranslateParams(max_tokens=0, max_length_ratio=2.0, beam_size=4, length_penalty=0.0)
    served = Offline(model).translate([s for s, _ in raw], params)
    for (source, _), outcome in zip(raw, served, strict=True):
        src = model.tokenizer.encode(source).ids
        expected = beam_translate(torch_model, src, beam=4, max_len=2 * len(src) + 10)
        assert [e.id for e in outcome.events] == expected, source


def test_validation_completions_are_the_served_suggestions(tmp_path: Path) -> None:
    from trainer.decoding import complete

    checkpoint, raw = memorized("autocomplete", 4, 20)
    model = open_model(export_checkpoint(checkpoint, out=tmp_path, name="ac"))
    torch_model = rebuild_model(checkpoint).eval()
    prefixes = [query[: len(query) // 2] for query in raw]
    served = ranking.suggestions(Offline(model), prefixes, k=5)
    decode = model.tokenizer.decode
    for prefix, found in zip(prefixes, served, strict=True):
        ids = [model.bos_id, *model.tokenizer.encode(prefix).ids]
        start = len(decode(ids))
        ours = [decode([*ids, *c])[start:] for c in complete(torch_model, ids[1:], k=5)]
        assert ours == [text for text, _ in found], prefix
