"""Autocomplete's served suggestions: generate, then rank.

The candidates of a prefix are the popular-query index's most frequent completions of it (or,
for a prefix it holds none of, the candidates that popular query endings lend: `popular.py`) and,
unless the index alone fills the answer, the language model's beam-search completions
(`manifest.popular.ranking.candidates` of each, as when the weights were fit). The model scores
every index or lent candidate by teacher forcing from the prefix's state in one batched
`lm_step` (beside the beam, when one runs; a candidate the beam also found keeps the beam's
log-probability), so that `popular.rank` weighs every signal for every candidate, as
recur-train did when it fit the weights (trainer/ranking.py).
The best candidate's tokens and their log-probabilities are kept, so that `replay` can stream it
token by token under the request's finish rules.

The index is keyed by the tokenizer's normal form of the text (NFKC): the typed text is looked
up in that form. A beam completion's text is what its tokens add to the decoded prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from services import popular
from services.decoding import Hypothesis, log_softmax
from services.detokenizer import Detokenizer
from services.events import Event, Finished, FinishReason, Suggestion, TokenEvent
from services.model import Arrays, LoadedModel
from services.requests import CompleteParams
from services.runtime import Runtime
from services.timing import Clock

SCORE_BUCKET = 16  # scoring steps are padded to a multiple of this many tokens


@dataclass(frozen=True)
class Candidate:
    """A completion as the model would produce it: tokens, each one's log-probability, and the
    total (with the end-of-sequence token's when `ended`)."""

    tokens: tuple[int, ...]
    token_logprobs: tuple[float, ...]
    logprob: float
    ended: bool


@dataclass(frozen=True)
class Ranked:
    """A ranked suggestion with the candidate it came from."""

    suggestion: Suggestion
    candidate: Candidate


def normal_form(tokenizer: Tokenizer, text: str) -> str:
    """`text` as the model reads it and as the index stores queries (the tokenizer's normalizer)."""
    normalizer = tokenizer.normalizer
    return normalizer.normalize_str(text) if normalizer is not None else text


def from_beam(
    model: LoadedModel, prefix: list[int], found: list[Hypothesis]
) -> dict[str, Candidate]:
    """The beam's hypotheses by the text they add to `prefix`, best first (a text reached twice
    keeps its better hypothesis)."""
    start = len(model.tokenizer.decode(prefix))
    beam: dict[str, Candidate] = {}
    for h in found:
        text = model.tokenizer.decode([*prefix, *h.tokens])[start:]
        beam.setdefault(text, Candidate(h.tokens, h.token_logprobs, h.logprob, h.finished))
    return beam


async def score(
    runtime: Runtime, state: Arrays, logits: np.ndarray, completions: list[str]
) -> dict[str, Candidate]:
    """The model's log-probability of each completion and its end after the prefix whose state
    is `state` (one slot) and next-token logits `logits: (V,)`, in one batched step.

    Rows are right-padded, to a multiple of `SCORE_BUCKET` tokens: what a row's padding predicts
    is never used, and the scheduler batches only steps of the same length, so the scoring steps
    of concurrent answers share calls.
    """
    if not completions:
        return {}
    model = runtime.model
    rows = [[*e.ids, model.eos_id] for e in model.tokenizer.encode_batch(completions)]
    first = log_softmax(logits.astype(np.float64))  # (V,)
    width = max(len(row) for row in rows)
    later = None  # (R, T): each row's log-probability of its token at every later position
    if width > 1:
        padded = -(-(width - 1) // SCORE_BUCKET) * SCORE_BUCKET
        feeds = np.full((len(rows), padded), model.pad_id, dtype=np.int64)  # (R, T)
        targets = np.zeros_like(feeds)  # what each position's logits must predict
        for i, row in enumerate(rows):
            feeds[i, : len(row) - 1] = row[:-1]
            targets[i, : len(row) - 1] = row[1:]
        with runtime.lease(len(rows)) as slots:
            runtime.pool.write(slots, state)  # every row starts from the prefix's state
            out = await runtime.step("lm_step", slots, {"tokens": feeds})
        logprobs = log_softmax(out["logits"].astype(np.float64))  # (R, T, V): all rows at once
        later = np.take_along_axis(logprobs, targets[..., None], axis=2)[..., 0]
    found = {}
    for i, (text, row) in enumerate(zip(completions, rows, strict=True)):
        each = [float(first[row[0]])]
        if later is not None:
            each += later[i, : len(row) - 1].tolist()
        found[text] = Candidate(tuple(row[:-1]), tuple(each[:-1]), float(sum(each)), True)
    return found


def candidates(model: LoadedModel, query: str) -> tuple[list[tuple[str, int]], list[popular.Lent]]:
    """The index's most frequent completions of `query` (the prefix in normal form) with their
    counts and, when it holds none, the suffix index's lent candidates (none without a suffix
    index)."""
    assert model.popular is not None
    indexed = model.popular.completions(query, k=model.candidates)
    if indexed or model.suffixes is None:
        return indexed, []
    return [], popular.suffix_completions(model.suffixes, query, k=model.candidates)


def beam_needed(indexed: int, lent: int, n: int) -> bool:
    """Whether a beam search must add candidates: the index's `indexed` (or the `lent`)
    completions do not fill the `n` suggestions. Where they do, the model only scores them
    (the beam's candidates did not change the ranked MRR, docs/suggestions.md); recur-train's
    ranking fit applies the same rule."""
    return indexed + lent < n


def rank(
    model: LoadedModel,
    query: str,
    beam: dict[str, Candidate],
    scored: dict[str, Candidate],
    n: int,
    *,
    indexed: list[tuple[str, int]],
    lent: list[popular.Lent],
) -> list[Ranked]:
    """The top `n` distinct candidates by `popular.rank` with the model's weights: `query` is the
    prefix in normal form, `beam` the model's completions, `scored` the index's or the lent
    ones that the beam did not find, `indexed` and `lent` what `candidates` found (the weights
    are `ranking` where the index holds completions of `query`, otherwise `suffix_ranking` when
    the bundle has a suffix index)."""
    weights = model.ranking if indexed or model.suffixes is None else model.suffix_ranking
    found = popular.rank(
        model.popular,
        query,
        [(text, c.logprob) for text, c in beam.items()],
        weights,
        n=n,
        index_k=model.candidates,
        model_logprobs={text: c.logprob for text, c in scored.items()},
        lent=lent,
        indexed=indexed,
    )
    return [
        Ranked(
            Suggestion(s.completion, s.model_logprob or 0.0, s.score, s.count),
            beam.get(s.completion) or scored[s.completion],
        )
        for s in found
    ]


def replay(
    model: LoadedModel,
    best: Candidate,
    prefix: list[int],
    params: CompleteParams,
    clock: Clock,
    emit: Callable[[Event], None],
    is_stale: Callable[[], bool],
) -> Finished:
    """Stream an already chosen completion token by token, under the request's finish rules
    (`max_tokens`, stop strings after `min_tokens`, superseded), as the decode loop applies them
    (the caller replays only a completion of at least `min_tokens` tokens)."""
    detok = Detokenizer(model, prefix)
    reason = FinishReason.STOP if best.ended else FinishReason.LENGTH
    for index, (token, logprob) in enumerate(zip(best.tokens, best.token_logprobs, strict=True)):
        if is_stale():
            reason = FinishReason.SUPERSEDED
            break
        if index >= params.max_tokens:
            reason = FinishReason.LENGTH
            break
        clock.mark()
        emit(TokenEvent(index, token, detok.add(token), logprob))
        if detok.ends_with(params.stop, at_least=params.min_tokens):
            reason = FinishReason.STOP
            break
    return completion_final(model, clock, reason, detok, prefix)


def completion_final(
    model: LoadedModel, clock: Clock, reason: FinishReason, detok: Detokenizer, prefix: list[int]
) -> Finished:
    """The final event of a completion of `prefix` (`[BOS]` and the text's tokens) whose tokens
    `detok` holds after the prefix's, however they were chosen (decoded or replayed)."""
    return clock.finish(
        model,
        reason=reason,
        text=detok.output,
        input_tokens=len(prefix) - 1,
        output_tokens=len(detok.ids) - len(prefix),
    )
