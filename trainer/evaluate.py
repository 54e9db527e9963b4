"""Task metrics of an exported bundle, computed through ONNX Runtime on the bundle's own graphs
and tokenizer (not the PyTorch model), so they measure what the service serves.

| task         | metrics                                                                   |
|--------------|---------------------------------------------------------------------------|
| sentiment    | `accuracy`, `macro_f1`, `loss` (of the label after the last token);        |
|              | `accuracy_at_P`, `ece_at_P` (10 bins) of the running label after P% of    |
|              | each text's tokens, P in 25, 50, 75, 100 (what the stream shows there)    |
| translation  | `bleu` (sacreBLEU, 13a), `exact_match`: greedy, encoder + decoder_step;   |
|              | with `beam_size` > 1 also `bleu_beam` (beam search, `trainer.decoding`'s) |
|              | with fitted decoding defaults: `bleu_default`, `length_ratio_default` (the |
|              | service's beam search with them) and `bleu_unpenalized`, ... (penalty 0)  |
| autocomplete | `nats_per_token`, `perplexity`, `bits_per_char` (character-level), `mrr_at_10` |
|              | with a popular-query index: the QAC report of `trainer/ranking.py` (MRR@10,  |
|              | success@1/@10 of the ranked system, the model alone and MPC, by prefix class)  |

Every result also holds `examples`, the number of examples the metrics were computed on.

The metric definitions are `trainer/metrics.py`'s, shared with the trainer's validation. BLEU
compares the detokenized hypothesis with the reference in the tokenizer's normal form (normalized
and split into words: lowercased for Recur's word tokenizers), because a word-level model cannot
produce the case or spacing it never saw. Exact match compares token ids, as the trainer's
`valid_exact_match` does. MRR@10 completes the first half of every held-out line
(`trainer.completions`, `metrics.split_query`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer import metrics
from trainer.completions import log_softmax, mrr_at_k
from trainer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, is_character_level
from trainer.ort_bundle import BundleReadError, OrtBundle
from trainer.tasks.autocomplete import MAX_CHARS
from trainer.tasks.sentiment import MAX_TOKENS as SENTIMENT_MAX_TOKENS
from trainer.tasks.translation import MAX_TOKENS as TRANSLATION_MAX_TOKENS

BATCH_SIZE = 64
# The metric that gates a quantization, and whether higher is better.
HEADLINE = {
    "sentiment": ("accuracy", True),
    "translation": ("bleu", True),
    "autocomplete": ("nats_per_token", False),
}


def evaluate(
    model: OrtBundle, examples: list[Any], *, completions: bool = True, beam_size: int = 0
) -> dict[str, float]:
    """The task metrics of `model` on raw `examples` (as the task's readers return them).

    Args:
        model: the bundle's sessions.
        examples: sentiment `(text, label)`, translation `(source, target)`, autocomplete `str`.
        completions: autocomplete only: also compute MRR@10 (a beam search per example).
        beam_size: translation only: > 1 also computes BLEU of beam search of this width.
    """
    if model.task == "sentiment":
        return sentiment_metrics(model, examples)
    if model.task == "translation":
        return translation_metrics(model, examples, beam_size=beam_size)
    return autocomplete_metrics(model, examples, completions=completions)


def _pad(rows: list[list[int]]) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out  # (B, T)


def _batches(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + BATCH_SIZE] for i in range(0, len(items), BATCH_SIZE)]


def pool(logits: np.ndarray, lengths: np.ndarray, pooling: str) -> np.ndarray:
    """The label logits `(B, C)` from per-token `logits: (B, T, C)` (see models/classifier.py)."""
    rows = np.arange(len(lengths))
    if pooling in ("", "last"):
        return logits[rows, lengths - 1]
    real = (np.arange(logits.shape[1])[None, :] < lengths[:, None])[:, :, None]  # (B, T, 1)
    if pooling == "mean":
        return (logits * real).sum(1) / lengths[:, None]
    return np.where(real, logits, -np.inf).max(1)


def running_pool(logits: np.ndarray, pooling: str) -> np.ndarray:
    """The label logits of every prefix `(B, T, C)`: at t, the pool of positions 0..t (what the
    stream shows after token t; `Classifier.running`)."""
    if pooling in ("", "last"):
        return logits
    if pooling == "mean":
        return logits.cumsum(1) / np.arange(1, logits.shape[1] + 1)[None, :, None]
    return np.maximum.accumulate(logits, axis=1)


PREFIX_SHARES = (25, 50, 75, 100)  # % of a text's tokens read before its running label is scored


def sentiment_metrics(model: OrtBundle, examples: list[tuple[str, int]]) -> dict[str, float]:
    """Accuracy, macro F1 and cross-entropy of each text's label (pooled as the model was), and
    accuracy and calibration error of the running label after each share of its tokens (the
    first ceil(P% of L) tokens, at least one)."""
    encoded = [(model.tokenizer.encode(t).ids[:SENTIMENT_MAX_TOKENS], y) for t, y in examples]
    encoded = [(ids, y) for ids, y in encoded if ids]
    labels, predictions, nats = [], [], 0.0
    shown: dict[int, list[np.ndarray]] = {share: [] for share in PREFIX_SHARES}  # (B, C) probs
    for chunk in _batches(encoded):
        tokens = _pad([ids for ids, _ in chunk])
        out = model.run("classifier_step", {"tokens": tokens, **model.zero_state(len(chunk))})
        lengths = np.array([len(ids) for ids, _ in chunk])
        logp = log_softmax(pool(out["logits"], lengths, model.manifest.pooling))  # (B, C)
        gold = [y for _, y in chunk]
        nats -= float(logp[np.arange(len(chunk)), gold].sum())
        labels += gold
        predictions += logp.argmax(1).tolist()
        running = running_pool(out["logits"], model.manifest.pooling)  # (B, T, C)
        for share in PREFIX_SHARES:
            read = np.maximum(np.ceil(lengths * share / 100).astype(int), 1)  # tokens read
            shown[share].append(np.exp(log_softmax(running[np.arange(len(chunk)), read - 1])))
    result = {
        "accuracy": metrics.accuracy(labels, predictions),
        "macro_f1": metrics.macro_f1(labels, predictions),
        "loss": nats / max(len(labels), 1),
        "examples": float(len(labels)),
    }
    for share, parts in shown.items():
        probs = np.concatenate(parts) if parts else np.zeros((0, 1))  # (N, C)
        correct = (probs.argmax(1) == np.array(labels)).tolist()
        result[f"accuracy_at_{share}"] = metrics.accuracy(labels, probs.argmax(1).tolist())
        result[f"ece_at_{share}"] = metrics.calibration_error(probs.max(1).tolist(), correct)
    return result


def greedy_translate(
    model: OrtBundle, sources: list[list[int]], *, max_len: int
) -> list[list[int]]:
    """Greedy decoding of a batch of source ids; each output stops before its first `[EOS]`."""
    src = _pad(sources)  # (B, S)
    src_len = np.array([len(s) for s in sources], dtype=np.int64)
    encoded = model.run("encoder", {"src": src, "src_len": src_len})
    state = model.encoder_state(encoded)
    fixed = {"memory": encoded["memory"], "src_mask": np.arange(src.shape[1]) < src_len[:, None]}
    prev = np.full((len(sources), 1), BOS_ID, dtype=np.int64)
    outputs: list[list[int]] = [[] for _ in sources]
    done = np.zeros(len(sources), dtype=bool)
    for _ in range(max_len):
        out = model.run("decoder_step", {"prev": prev, **state, **fixed})
        state = model.next_state(out)
        prev = out["logits"].argmax(1).astype(np.int64)[:, None]  # (B, 1)
        for i, token in enumerate(prev[:, 0].tolist()):
            if not done[i] and token != EOS_ID:
                outputs[i].append(token)
        done |= prev[:, 0] == EOS_ID
        if done.all():
            break
    return outputs


def beam_translate(model: OrtBundle, src: list[int], *, beam: int, max_len: int) -> list[int]:
    """The best translation of one source by beam search through the graphs: the search of
    `trainer.decoding.beam_translate` (the trainer's `valid_bleu_beam`), step for step."""
    encoded = model.run("encoder", {"src": np.array([src]), "src_len": np.array([len(src)])})
    state = model.encoder_state(encoded)
    beams: list[list[int]] = [[]]
    scores = np.zeros(1)
    prev = np.full((1, 1), BOS_ID, dtype=np.int64)
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_len):
        n = len(beams)
        fixed = {"memory": np.repeat(encoded["memory"], n, axis=0),
                 "src_mask": np.ones((n, len(src)), dtype=bool)}  # fmt: skip
        out = model.run("decoder_step", {"prev": prev, **state, **fixed})
        total = scores[:, None] + log_softmax(out["logits"].astype(np.float64))  # (n, V)
        total[:, [PAD_ID, BOS_ID]] = -np.inf
        flat = np.argsort(-total, axis=None, kind="stable")[:beam]
        top, rows, cols = total.flat[flat], flat // total.shape[1], flat % total.shape[1]
        ends = cols == EOS_ID
        finished += [(float(t) / (len(beams[r]) + 1), beams[r])
                     for t, r in zip(top[ends], rows[ends], strict=True)]  # fmt: skip
        if len(finished) >= beam or ends.all():
            break
        top, rows, cols = top[~ends], rows[~ends], cols[~ends]
        beams = [[*beams[r], int(c)] for r, c in zip(rows, cols, strict=True)]
        scores, prev = top, cols[:, None].astype(np.int64)
        state = {name: value[:, rows] for name, value in model.next_state(out).items()}
    else:
        finished += [(float(t) / max(len(b), 1), b) for t, b in zip(scores, beams, strict=True)]
    return max(finished, key=lambda f: f[0])[1]


def translation_metrics(
    model: OrtBundle, examples: list[tuple[str, str]], *, beam_size: int = 0
) -> dict[str, float]:
    """sacreBLEU and exact match of greedy translations; BLEU of beam search if asked."""
    encode = model.tokenizer.encode
    rows = [
        (encode(s).ids[:TRANSLATION_MAX_TOKENS], encode(t).ids[:TRANSLATION_MAX_TOKENS], t)
        for s, t in examples
    ]
    rows = [r for r in rows if r[0] and r[1]]
    hypotheses, references, exact = [], [], 0
    for chunk in _batches(rows):
        max_len = 2 * max(len(s) for s, _, _ in chunk) + 10  # as the trainer's validation
        for ids, (_, tgt_ids, tgt) in zip(
            greedy_translate(model, [s for s, _, _ in chunk], max_len=max_len), chunk, strict=True
        ):
            hypotheses.append(model.tokenizer.decode(ids))
            references.append(metrics.normal_form(model.tokenizer, tgt))
            exact += ids == tgt_ids
    result = {
        "bleu": metrics.bleu(hypotheses, references),
        "exact_match": exact / max(len(rows), 1),
        "examples": float(len(rows)),
    }
    if model.manifest.HasField("decoding"):
        from trainer.beam_defaults import served_metrics

        result |= served_metrics(model, examples)
    if beam_size > 1:
        beamed = [
            beam_translate(model, s, beam=beam_size, max_len=2 * len(s) + 10) for s, _, _ in rows
        ]
        result["bleu_beam"] = metrics.bleu([model.tokenizer.decode(b) for b in beamed], references)
    return result


def autocomplete_metrics(
    model: OrtBundle, examples: list[str], *, completions: bool = True
) -> dict[str, float]:
    """Next-token cross-entropy of `[BOS] line [EOS]` sequences, and MRR@10 of completions."""
    lines = [ids[:MAX_CHARS] for ids in (model.tokenizer.encode(q).ids for q in examples) if ids]
    nats, count = 0.0, 0
    for chunk in _batches(lines):
        sequences = _pad([[BOS_ID, *ids, EOS_ID] for ids in chunk])  # (B, T + 1)
        inputs, targets = sequences[:, :-1], sequences[:, 1:]
        out = model.run("lm_step", {"tokens": inputs, **model.zero_state(len(chunk))})
        logp = log_softmax(out["logits"])  # (B, T, V)
        picked = np.take_along_axis(logp, targets[..., None], axis=2)[..., 0]  # (B, T)
        mask = targets != PAD_ID
        nats -= float(picked[mask].sum())
        count += int(mask.sum())
    per_token = nats / max(count, 1)
    result = {
        "nats_per_token": per_token,
        "perplexity": metrics.perplexity(per_token),
        "examples": float(len(lines)),
    }
    if is_character_level(model.tokenizer):
        result["bits_per_char"] = metrics.bits(per_token)
    if completions:
        result["mrr_at_10"] = mrr_at_k(model, lines, k=10)
        if model.manifest.HasField("popular"):
            result |= qac_metrics(model, examples)
    return result


def qac_metrics(model: OrtBundle, examples: list[str]) -> dict[str, float]:
    """The QAC report of the bundle's ranked suggestions, model and index (`trainer.ranking`)."""
    from services.errors import BundleError
    from services.popular import PopularIndex
    from trainer import ranking

    popular = model.manifest.popular
    try:
        index = PopularIndex.load(model.path / popular.file,
                                  sha256=model.manifest.sha256.get(popular.file, ""))  # fmt: skip
    except BundleError as e:
        raise BundleReadError(str(e)) from None
    cases = ranking.build_cases(model, index, examples)
    return ranking.report(cases, index, ranking.weights_of(model.manifest))


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


def checkpoint_examples(checkpoint: dict[str, Any]) -> list[Any]:
    """The validation split a checkpoint was trained with (built-in, `--valid`, or held out)."""
    from dataclasses import fields

    from trainer.config import TrainConfig
    from trainer.tasks import get_task

    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in checkpoint["config"].items() if k in known})
    _, valid, _ = get_task(checkpoint["task"]).load_raw(cfg)
    return list(valid)
