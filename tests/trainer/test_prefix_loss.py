"""Running sentiment: the `--prefix-loss` weighting, the running pool of every prefix, and the
metrics of the running label after a share of each text's tokens (accuracy, ECE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.engine import RunningPool
from services.offline import Offline, open_model
from tests.conftest import untrained_checkpoint
from trainer import metrics
from trainer.config import TrainConfig
from trainer.evaluate import PREFIX_SHARES, evaluate
from trainer.export import export_checkpoint
from trainer.models import Classifier, ClassifierConfig
from trainer.tasks import get_task
from trainer.tasks.sentiment import prefix_weighted

LOGITS = torch.tensor([[[1.0, 4.0], [3.0, 0.0], [9.0, 9.0]],
                       [[0.0, 1.0], [2.0, 2.0], [4.0, -3.0]]])  # fmt: skip
MEAN = [[[1.0, 4.0], [2.0, 2.0], [13 / 3, 13 / 3]], [[0.0, 1.0], [1.0, 1.5], [2.0, 0.0]]]
MAX = [[[1.0, 4.0], [3.0, 4.0], [9.0, 9.0]], [[0.0, 1.0], [2.0, 2.0], [4.0, 2.0]]]


@pytest.mark.parametrize(
    ("pooling", "expected", "reason"),
    [
        ("last", LOGITS.tolist(), "the latest logits are the prefix's"),
        ("mean", MEAN, "the mean so far"),
        ("max", MAX, "the per-class maximum so far"),
    ],
)
def test_running_pool_by_hand(pooling: str, expected: list[list[list[float]]], reason: str) -> None:
    model = Classifier(ClassifierConfig(vocab_size=8, pooling=pooling))
    assert model.running(LOGITS).tolist() == pytest.approx(np.array(expected)), reason
    served = []  # the service's pooling, one token at a time (services.engine.RunningPool)
    for row in LOGITS.numpy():
        pool = RunningPool(pooling)
        served.append([pool.add(logits).tolist() for logits in row])
    assert np.array(served) == pytest.approx(np.array(expected)), reason
    lengths = torch.tensor([2, 3])
    final = model.running(LOGITS)[torch.arange(2), lengths - 1]
    assert final.tolist() == model.pool(LOGITS, lengths).tolist(), "the last real prefix's pool"


def test_linear_prefix_weights_by_hand() -> None:
    nats = torch.tensor([[1.0, 2.0, 3.0, 7.0], [4.0, 9.0, 9.0, 9.0]])  # 7 and 9s: padding
    got = prefix_weighted(nats, torch.tensor([3, 1]))
    # ½·3 + ½·(1·1 + 2·2 + 3·3)/6, and a one-token text's loss is its only prefix's
    assert got.tolist() == pytest.approx([1.5 + 14 / 12, 4.0])


def test_prefix_loss_none_is_the_final_labels_cross_entropy() -> None:
    cfg = TrainConfig(task="sentiment", prefix_loss="none", embed_dim=8, hidden_size=8,
                      max_train_examples=16)  # fmt: skip
    task = get_task("sentiment")
    data = task.prepare(cfg)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size()).eval()
    batch = task.collate(data.train[:8])
    logits, _ = model(batch["tokens"], model.init_hidden(8))
    final = torch.nn.functional.cross_entropy(model.pool(logits, batch["lengths"]), batch["labels"])
    assert task.loss(model, batch)[0].item() == pytest.approx(final.item())


@pytest.mark.parametrize(
    ("confidences", "correct", "expected", "reason"),
    [
        ([0.9, 0.9, 0.9, 0.9], [True] * 3 + [False], 0.15, "one bin: |0.75 - 0.9|"),
        ([0.55, 0.95], [True, True], (0.45 + 0.05) / 2, "two bins, half each"),
        ([0.7, 0.7, 1.0], [True, False, True], (2 * 0.2 + 0.0) / 3, "1.0 falls in the top bin"),
        ([], [], 0.0, "no predictions"),
    ],
)
def test_calibration_error(confidences: list[float], correct: list[bool], expected: float,
                           reason: str) -> None:  # fmt: skip
    assert metrics.calibration_error(confidences, correct) == pytest.approx(expected), reason


def test_metrics_by_prefix_share_through_onnx(tmp_path: Path) -> None:
    """The running label after 100% of the tokens is the final label; each share's accuracy is
    the share of texts whose running label after ceil(P% of L) tokens is right (here: the
    classifier graph run directly on those tokens, pooled as the manifest says)."""
    checkpoint = untrained_checkpoint("sentiment", "gru")
    model = open_model(export_checkpoint(checkpoint, out=tmp_path, name="sentiment"))
    examples = [("a good film", 1), ("a bad film", 0), ("good", 1), ("not a good film at all", 0)]
    got = evaluate(model, examples)
    assert got["accuracy_at_100"] == got["accuracy"]
    for share in PREFIX_SHARES:
        assert 0.0 <= got[f"ece_at_{share}"] <= 1.0
        right = 0
        for text, label in examples:
            ids = model.tokenizer.encode(text).ids
            read = max(int(np.ceil(len(ids) * share / 100)), 1)
            out = model.run("classifier_step", {"tokens": np.array([ids[:read]]),
                                                **model.zero_state(1)})  # fmt: skip
            pool = RunningPool(model.bundle.manifest.pooling)
            pooled = [pool.add(logits) for logits in out["logits"][0]][-1]
            right += int(pooled.argmax()) == label
        assert got[f"accuracy_at_{share}"] == pytest.approx(right / len(examples)), share


@pytest.mark.slow
def test_the_demo_model_is_uncertain_after_not(tmp_path: Path) -> None:
    """The demo's sentiment run (built-in corpus, one epoch) trained with every prefix scored:
    after "not" its running label estimates P(positive | the text starts with "not"), which the
    training split gives (about one half: "not" opens good and bad reviews alike), and "not good"
    ends negative."""
    from tests.conftest import tiny_config
    from trainer.cli import run
    from trainer.data.builtin import sentiment_reviews

    opening = [label for text, label in sentiment_reviews(seed=0).train
               if text.split()[0] == "not"]  # fmt: skip
    expected = sum(opening) / len(opening)
    cfg = tiny_config("sentiment", tmp_path, prefix_loss="linear", embed_dim=64,
                      hidden_size=128, max_train_examples=0)  # fmt: skip
    model = open_model(run(cfg))  # type: ignore[arg-type]
    (streamed,) = Offline(model).analyze(["not good"])
    probs = np.array([event.probabilities for event in streamed.events])  # (T, C)
    positive = model.labels.index("positive")
    assert abs(probs[0, positive] - expected) <= 0.15, (probs[0], expected)
    assert probs[-1].argmax() != positive
