"""Task metrics of an exported bundle, computed by the serving engine itself: the bundle loaded
as `recur-serve` loads it and every example sent through `Engine.translate/analyze/complete`
in-process (`services.offline`, no gRPC), so they measure exactly what the service streams.

| task         | metrics                                                                   |
|--------------|---------------------------------------------------------------------------|
| sentiment    | `accuracy`, `macro_f1`, `loss` (of the label after the last token);        |
|              | `accuracy_at_P`, `ece_at_P` (10 bins) of the running label after P% of    |
|              | each text's tokens, P in 25, 50, 75, 100 (what the stream shows there)    |
| translation  | `bleu` (sacreBLEU, 13a), `exact_match`: greedy translations;              |
|              | with `beam_size` > 1 also `bleu_beam` (the served beam search)            |
|              | with fitted decoding defaults: `bleu_default`, `length_ratio_default` (the |
|              | served beam search with them) and `bleu_unpenalized`, ... (penalty 0)      |
| autocomplete | `nats_per_token`, `perplexity`, `bits_per_char` (character-level), `mrr_at_10` |
|              | with a popular-query index: the QAC report of `trainer/ranking.py` (MRR@10,  |
|              | success@1/@10 of the ranked system, the model alone and MPC, by prefix class)  |

Every result also holds `examples`, the number of examples the metrics were computed on.

The metric definitions are `trainer/metrics.py`'s, shared with the trainer's validation. A
sentiment text is read up to the task's `MAX_TOKENS` (its stream is closed there), as the
trainer reads it. Translations are served with the service's length rule (at most 2 * source
tokens + 10). BLEU compares the streamed text with the reference in the tokenizer's normal form
(normalized and split into words: lowercased for Recur's word tokenizers), because a word-level
model cannot produce the case or spacing it never saw. Exact match compares token ids, as the
trainer's `valid_exact_match` does. Autocomplete's nats per token are the served prompt reading
of `[BOS] line [EOS]` scored against its next tokens; MRR@10 ranks each held-out query's ending
among the served suggestions (beam search) for its first half (`trainer.ranking.split_text`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from services.events import RunningLabel
from services.model import LoadedModel
from services.offline import Offline, Outcome, Progress
from services.requests import TranslateParams
from trainer import metrics
from trainer.data.tokenizer import is_character_level
from trainer.tasks.autocomplete import MAX_CHARS
from trainer.tasks.sentiment import MAX_TOKENS as SENTIMENT_MAX_TOKENS
from trainer.tasks.translation import MAX_TOKENS as TRANSLATION_MAX_TOKENS

if TYPE_CHECKING:
    from trainer.checkpoint import Checkpoint

# The metric that gates a quantization, and whether higher is better.
HEADLINE = {
    "sentiment": ("accuracy", True),
    "translation": ("bleu", True),
    "autocomplete": ("nats_per_token", False),
}
PREFIX_SHARES = (25, 50, 75, 100)  # % of a text's tokens read before its running label is scored


def greedy() -> TranslateParams:
    """Greedy translation with the service's length rule, every setting spelled out (the
    service's defaults for unset fields may change; an evaluation must not)."""
    return TranslateParams(max_tokens=0, max_length_ratio=2.0, beam_size=1, length_penalty=0.0)


def beam(size: int, length_penalty: float) -> TranslateParams:
    """Beam search of `size` with GNMT's `length_penalty`, the service's length rule."""
    return TranslateParams(max_tokens=0, max_length_ratio=2.0, beam_size=size,
                           length_penalty=length_penalty)  # fmt: skip


def evaluate(
    model: LoadedModel,
    examples: list[Any],
    *,
    completions: bool = True,
    beam_size: int = 0,
    length_penalty: float = 0.0,
    progress: Progress | None = None,
) -> dict[str, float]:
    """The task metrics of `model` on raw `examples` (as the task's readers return them).

    Args:
        model: the bundle, loaded as the service loads it (`services.offline.open_model`).
        examples: sentiment `(text, label)`, translation `(source, target)`, autocomplete `str`.
        completions: autocomplete only: also compute MRR@10 (served suggestions per example).
        beam_size: translation only: > 1 also computes BLEU of beam search of this width...
        length_penalty: ... with this length penalty.
        progress: called with (requests done, requests in all) as they finish.
    """
    engine = Offline(model, progress=progress)
    if model.task == "sentiment":
        return sentiment_metrics(engine, examples)
    if model.task == "translation":
        return translation_metrics(engine, examples, beam_size=beam_size,
                                   length_penalty=length_penalty)  # fmt: skip
    return autocomplete_metrics(engine, examples, completions=completions)


def sentiment_metrics(engine: Offline, examples: list[tuple[str, int]]) -> dict[str, float]:
    """Accuracy, macro F1 and cross-entropy of each text's label (pooled as the model was), and
    accuracy and calibration error of the running label after each share of its tokens (the
    first ceil(P% of L) tokens, at least one)."""
    tokenizer = engine.model.tokenizer
    rows = [(t, y, min(len(tokenizer.encode(t).ids), SENTIMENT_MAX_TOKENS)) for t, y in examples]
    rows = [row for row in rows if row[2]]
    outcomes = engine.analyze([t for t, _, _ in rows], read=[n for _, _, n in rows])
    reads = [n for _, _, n in rows]

    def shown(share: int) -> np.ndarray:
        """The running probabilities after ceil(share% of the read tokens), at least one."""
        probs = [_label(o, max(math.ceil(n * share / 100), 1) - 1)
                 for o, n in zip(outcomes, reads, strict=True)]  # fmt: skip
        return np.array(probs, dtype=np.float64).reshape(len(rows), len(engine.model.labels))

    labels = [y for _, y, _ in rows]
    final = shown(100)
    predictions = final.argmax(1).tolist()
    nats = float((-np.log(final[np.arange(len(rows)), labels])).sum())
    result = {
        "accuracy": metrics.accuracy(labels, predictions),
        "macro_f1": metrics.macro_f1(labels, predictions),
        "loss": nats / max(len(labels), 1),
        "examples": float(len(labels)),
    }
    for share in PREFIX_SHARES:
        probs = shown(share)
        correct = (probs.argmax(1) == np.array(labels)).tolist()
        result[f"accuracy_at_{share}"] = metrics.accuracy(labels, probs.argmax(1).tolist())
        result[f"ece_at_{share}"] = metrics.calibration_error(probs.max(1).tolist(), correct)
    return result


def _label(outcome: Outcome, index: int) -> tuple[float, ...]:
    """The running label's probabilities after token `index` of a sentiment stream."""
    event = outcome.events[index]
    assert isinstance(event, RunningLabel)
    return event.probabilities


def translation_metrics(
    engine: Offline,
    examples: list[tuple[str, str]],
    *,
    beam_size: int = 0,
    length_penalty: float = 0.0,
) -> dict[str, float]:
    """sacreBLEU and exact match of greedy translations; BLEU of beam search if asked, and of
    the bundle's fitted decoding defaults if it has them."""
    tokenizer = engine.model.tokenizer
    rows = [(s, tokenizer.encode(s).ids[:TRANSLATION_MAX_TOKENS],
             tokenizer.encode(t).ids[:TRANSLATION_MAX_TOKENS], t) for s, t in examples]  # fmt: skip
    rows = [r for r in rows if r[1] and r[2]]
    sources = [s for s, _, _, _ in rows]
    references = [metrics.normal_form(tokenizer, t) for _, _, _, t in rows]
    greedy_out = engine.translate(sources, greedy())
    hypotheses = [[e.id for e in o.events] for o in greedy_out]
    exact = sum(ids == tgt for ids, (_, _, tgt, _) in zip(hypotheses, rows, strict=True))
    result = {
        "bleu": metrics.bleu(_texts(greedy_out), references),
        "exact_match": exact / max(len(rows), 1),
        "examples": float(len(rows)),
    }
    if engine.model.bundle.manifest.HasField("decoding"):
        from trainer.beam_defaults import served_metrics

        result |= served_metrics(engine, sources, references, greedy_out)
    if beam_size > 1:
        beamed = engine.translate(sources, beam(beam_size, length_penalty))
        result["bleu_beam"] = metrics.bleu(_texts(beamed), references)
    return result


def _texts(outcomes: list[Outcome]) -> list[str]:
    return [o.final.text if o.final else "" for o in outcomes]


def autocomplete_metrics(
    engine: Offline, examples: list[str], *, completions: bool = True
) -> dict[str, float]:
    """Next-token cross-entropy of `[BOS] line [EOS]` sequences, and MRR@10 of completions."""
    model = engine.model
    lines = [ids[:MAX_CHARS] for ids in (model.tokenizer.encode(q).ids for q in examples) if ids]
    sequences = [[model.bos_id, *ids, model.eos_id] for ids in lines]
    logprobs = engine.logprobs(sequences, start=[1] * len(sequences))
    count = sum(len(s) - 1 for s in sequences)
    per_token = -sum(logprobs) / max(count, 1)
    result = {
        "nats_per_token": per_token,
        "perplexity": metrics.perplexity(per_token),
        "examples": float(len(lines)),
    }
    if is_character_level(model.tokenizer):
        result["bits_per_char"] = metrics.bits(per_token)
    if completions:
        from trainer import ranking

        index = ranking.bundle_index(model)
        suffixes = ranking.bundle_index(model, "suffix_file")
        cases = ranking.build_cases(engine, index, examples, suffixes)
        result["mrr_at_10"] = ranking.model_mrr(cases)
        if index is not None:
            result |= ranking.report(cases, index, ranking.weights_of(model.bundle.manifest))
    return result


KINDS = {"translation": "pairs", "sentiment": "labelled", "autocomplete": "text"}


def load_examples(task: str, data: str, *, seed: int = 0, num_classes: int = 2,
                  config: dict[str, Any] | None = None) -> list[Any]:  # fmt: skip
    """Raw examples: the task's embedded validation split (`data="builtin"`), the split a run
    carved out of its `--train` (`data="held-out"`: its `--test`, else its `--valid`, found again
    from the training `config`), or a file's (sentiment rows whose label is not below
    `num_classes` are dropped by the reader).

    Raises:
        trainer.data.files.DataError: a file that is missing or not in a format of the task, or
            `held-out` for a run that carved nothing out of its training files.
    """
    from trainer.data import files
    from trainer.data.builtin import BUILTIN

    if data == "builtin":
        return list(BUILTIN[task](seed=seed).valid)
    if data == "held-out":
        return held_out(task, config or {}, num_classes=num_classes)
    if task == "translation":
        return list(files.read_pairs(data))
    if task == "sentiment":
        return list(files.read_labelled(data, num_classes=num_classes))
    return list(files.read_queries(data))


def held_out(task: str, config: dict[str, Any], *, num_classes: int = 2) -> list[Any]:
    """The test split (else the validation split) a run carved out of its `--train`."""
    from trainer.data import files

    valid, test = config.get("valid", ""), config.get("test", "")
    read = "test" if test else "valid"  # what evaluation reads: the run's --test, else --valid
    if config.get("data") != "files" or read not in files.carved_amounts(valid, test):
        raise files.DataError(
            "held-out: the bundle's run carved no split out of its --train (it trained on "
            f"{config.get('data', '?')} data with --valid {valid!r} --test {test!r}); name the "
            "file instead"
        )
    splits = files.load_splits(
        KINDS[task], config["train"], valid, test, seed=int(config.get("seed", 0)),
        carve_at=config.get("carve", "random"), num_classes=num_classes, log=None,
    )  # fmt: skip
    return list(splits.test if splits.test is not None else splits.valid)


def checkpoint_examples(checkpoint: Checkpoint) -> list[Any]:
    """The validation split a checkpoint was trained with (built-in, `--valid`, or held out)."""
    from trainer.tasks import get_task

    _, valid, _ = get_task(checkpoint.task).load_raw(checkpoint.config)
    return list(valid)
