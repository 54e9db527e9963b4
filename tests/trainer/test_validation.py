"""The tasks' validation metrics on models whose answers are known: memorized or constant."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from trainer.config import TrainConfig
from trainer.decoding import complete
from trainer.tasks import TaskData, get_task
from trainer.tasks.base import Task


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny models: a second thread only adds contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def memorize(task_name: str, train: list[Any], valid: list[Any], steps: int, lr: float = 2e-2,
             **kw: Any) -> tuple[Task, torch.nn.Module, TaskData]:  # fmt: skip
    """A tiny model trained on `train` until it knows it, and TaskData validating on `valid`."""
    cfg = TrainConfig(task=task_name, embed_dim=16, hidden_size=48, **kw)
    task = get_task(task_name)
    tokenizer = task.build_tokenizer(train + valid)
    data = TaskData(tokenizer, task.encode(train, tokenizer), task.encode(valid, tokenizer),
                    "test", valid_raw=valid, train_raw=train, cfg=cfg)  # fmt: skip
    torch.manual_seed(0)
    model = task.build_model(cfg, tokenizer.get_vocab_size())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batch = task.collate(data.train)
    for _ in range(steps):
        optimizer.zero_grad()
        task.loss(model, batch)[0].backward()
        optimizer.step()
    return task, model.eval(), data


def test_completion_mrr_of_the_model_and_of_the_baseline() -> None:
    """Prefixes are the first half of each query ("weathe", "cheap "): two queries share each.

    Most popular completion: ties go to the lexicographically first, so "weather london" and
    "cheap flights" rank 1 and their partners rank 2: MRR (1/2 + 1 + 1 + 1/2) / 4 = 0.75. The
    memorized model ranks both endings of a prefix first and second too: also 0.75.
    """
    queries = ["weather paris", "weather london", "cheap flights", "cheap hotels"]
    task, model, data = memorize("autocomplete", queries, queries, steps=60,
                                 eval_completions=4, lr=3e-2)  # fmt: skip
    metrics = task.evaluate(model, data)
    assert metrics["valid_mpc_mrr_at_10"] == pytest.approx(0.75)
    assert metrics["valid_mrr_at_10"] == pytest.approx(0.75)
    assert metrics["valid_bits_per_char"] == pytest.approx(metrics["valid_loss"] / math.log(2))
    prefix = data.tokenizer.encode("weathe").ids
    endings = {data.tokenizer.decode(ids) for ids in complete(model, prefix, k=2)}
    assert endings == {"r paris", "r london"}


def test_a_query_never_seen_in_training_defeats_the_baseline() -> None:
    train = ["cheap flights", "cheap flights", "cheap hotels"]
    valid = ["cheap hotels", "chess", "zebra"]  # prefixes "cheap ", "ch" (seen) and "ze" (unseen)
    task, model, data = memorize("autocomplete", train, valid, steps=1, eval_completions=3)
    metrics = task.evaluate(model, data)
    assert metrics["valid_mpc_mrr_at_10"] == pytest.approx((1 / 2 + 0 + 0) / 3)  # flights first
    assert metrics["valid_unseen_prefix_share"] == pytest.approx(1 / 3)
    assert metrics["valid_unseen_mpc_mrr_at_10"] == 0.0  # no training query starts with "ze"


def test_translation_bleu_of_memorized_sentences_greedy_and_beam() -> None:
    pairs = [("the cat sleeps", "le chat dort"), ("a dog runs", "un chien court"),
             ("the bird sings", "l'oiseau chante")]  # fmt: skip
    task, model, data = memorize("translation", pairs, pairs, steps=80, beam_size=3)
    metrics = task.evaluate(model, data)
    assert metrics["valid_exact_match"] == 1.0
    assert metrics["valid_bleu"] == pytest.approx(100.0)
    assert metrics["valid_bleu_beam"] == pytest.approx(100.0)
    assert metrics["valid_perplexity"] == pytest.approx(math.exp(metrics["valid_loss"]))


def test_sentiment_accuracy_and_macro_f1_of_a_constant_model() -> None:
    """A model that always answers "positive" on labels [0, 1, 1, 1]: accuracy 3/4, F1 of the
    positive class 6/7 (tp 3, fp 1), of the negative class 0; macro F1 3/7."""
    rows = [("bad", 0), ("good", 1), ("fine", 1), ("great", 1)]
    task, model, data = memorize("sentiment", rows, rows, steps=0)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, math.log(3)]))  # p(positive) = 3/4
    metrics = task.evaluate(model, data)
    assert metrics["valid_accuracy"] == pytest.approx(3 / 4)
    assert metrics["valid_macro_f1"] == pytest.approx(3 / 7)
    # cross-entropy: -(log 1/4 + 3 log 3/4) / 4
    assert metrics["valid_loss"] == pytest.approx(-(math.log(1 / 4) + 3 * math.log(3 / 4)) / 4)
