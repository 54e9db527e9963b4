"""The engine's decode loop: one model step for every stream that is generating, and the whole
batch's outputs processed at once.

A stream that has read its prompt (or, for translation, encoded its source and taken the first
decoder step) hands its generation to the model's `Decoder` and waits once, for the end. Until
then the decoder owns it: each turn it takes every live generation's next-token logits as one
`(B, V)` array, chooses the greedy rows' tokens with one argmax and one log-sum-exp over the batch
(sampled rows draw from their own generators), then for each row detokenizes, emits the token
event into the stream's collector and applies the finish rules (end of sequence, stop strings,
`max_tokens`, superseded). The rows still going take one batched step together: `lm_step` for a
language model, `decoder_step` for translation, whose rows also carry their own encoder memory
(padded to the longest source in the batch; the mask hides the padding). Generations join and
leave between turns (continuous batching), and the scheduler still batches the decoder's step
with other streams' one-token steps.

Beam searches run on the same loop (`Search`): each turn their live beams' logits take one
log-softmax together, each search picks its survivors, every survivor's state moves into its
beam's slot with one copy for all searches, and their rows join the same batched step. A beam
search costs no await per step and shares its calls with every other stream's decoding.

This is vLLM V1's shape on a small scale: per stream, nothing waits and nothing wakes per token;
the only per-row work is what cannot be batched (detokenization, stop strings, a search's choice
of survivors).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from services.decoding import BeamSearch, Hypothesis, Sampler, log_softmax
from services.detokenizer import Detokenizer
from services.events import Event, FinishReason, TokenEvent
from services.model import Arrays
from services.scheduler import stack_padded
from services.timing import Clock

if TYPE_CHECKING:  # the runtime owns its decoder
    from services.runtime import Runtime


@dataclass(eq=False)
class Generation:
    """One stream's decoding from `logits`, with its state in `slot`.

    Attributes:
        slot: The pool row holding the state after the prompt (and then after each token).
        logits: `(V,)` next-token logits after what was read so far.
        sampler: Greedy or the stream's own sampling generator.
        detok: The incremental detokenizer, primed with the prompt.
        max_tokens: Most tokens to generate.
        eos_id: The end-of-sequence token.
        stop: Stop strings; the generation ends after a token that makes it end with one.
        emit: Where the stream's events go (its collector).
        clock: The stream's timings.
        is_stale: True once the stream's answer is no longer wanted (a newer keystroke).
        context: The graph's other per-row inputs, the same at every step (translation: the
            source's encoder `memory` `(1, S, E)` and `src_mask` `(1, S)`).
        with_attention: Each token event carries the attention row of its step (translation).
        min_tokens: Neither the end of sequence (masked out of the logits: the token's
            log-probability is then of the other tokens) nor a stop string ends the generation
            before it has this many tokens.
    """

    slot: int
    logits: np.ndarray
    sampler: Sampler
    detok: Detokenizer
    max_tokens: int
    eos_id: int
    stop: tuple[str, ...]
    emit: Callable[[Event], None]
    clock: Clock
    is_stale: Callable[[], bool] = lambda: False
    context: Arrays = field(default_factory=dict)
    with_attention: bool = False
    min_tokens: int = 0
    attention: np.ndarray | tuple[()] = ()
    index: int = 0
    done: asyncio.Future[FinishReason] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()

    def finish(self, reason: FinishReason) -> None:
        if not self.done.done():
            self.done.set_result(reason)


@dataclass(eq=False)
class Search:
    """One stream's beam search from `logits`, with beam `i`'s state in `slots[i]`.

    Attributes:
        beam: The search's bookkeeping (live and ended hypotheses).
        slots: `(beam.size,)` pool rows; the root's state (after the prompt) is in `slots[0]`.
        logits: `(live, V)` next-token logits of the live beams (first: the root's, `(1, V)`).
        context: The graph's other per-row inputs of the stream, `(1, ...)` each (translation:
            `memory` and `src_mask`), given to every live beam.
        is_stale: True once the search's answer is no longer wanted; it stops with what it has.
    """

    beam: BeamSearch
    slots: np.ndarray
    logits: np.ndarray
    context: Arrays = field(default_factory=dict)
    is_stale: Callable[[], bool] = lambda: False
    done: asyncio.Future[list[Hypothesis]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.beam.ranked())


@dataclass(eq=False)
class _Rows:
    """What one stream puts into a decode step: its slots, the token each row reads, and its
    context rows (`(len(slots), ...)` each)."""

    owner: Generation | Search
    slots: list[int]
    tokens: list[int]
    context: Arrays


class Decoder:
    """The decode loop of one model: `lm_step` (language models) or `decoder_step` (the
    translation decoder), whichever its bundle has."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        graphs = {g.role for g in runtime.model.bundle.manifest.graphs}
        self.role = "decoder_step" if "decoder_step" in graphs else "lm_step"
        self.token_input = _TOKEN_INPUT[self.role]
        self.live: list[Generation] = []  # their logits are fresh: a token to choose
        self.searching: list[Search] = []  # their logits are fresh: survivors to choose
        self.ready: list[_Rows] = []  # chosen on joining: a step to take
        self._task: asyncio.Task[None] | None = None

    async def run(self, generation: Generation) -> FinishReason:
        """Decode `generation` to its end; its token events are emitted as they are chosen.

        Its first token is chosen at once, in the caller's turn (time to first token); the loop
        takes it from there.
        """
        self._join(self._choose([generation]))
        try:
            return await generation.done
        finally:  # finished, failed or cancelled: it takes no further step
            self._leave(generation)

    async def search(self, search: Search) -> list[Hypothesis]:
        """Run `search` to its end; returns its best `beam.size` hypotheses, best first (those
        it has when it turns stale). Its first survivors are chosen at once, in the caller's
        turn."""
        self._join(self._survivors([search]))
        try:
            return await search.done
        finally:
            self._leave(search)

    def _join(self, rows: list[_Rows]) -> None:
        self.ready += rows
        if self.ready and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._loop())

    def _leave(self, owner: Generation | Search) -> None:
        self.live = [g for g in self.live if g is not owner]
        self.searching = [s for s in self.searching if s is not owner]
        self.ready = [r for r in self.ready if r.owner is not owner]

    async def _loop(self) -> None:
        while self.live or self.searching or self.ready:
            going = self.ready + self._choose(self.live) + self._survivors(self.searching)
            self.ready = []  # streams that join during the step come next turn
            self.live = [r.owner for r in going if isinstance(r.owner, Generation)]
            self.searching = [r.owner for r in going if isinstance(r.owner, Search)]
            if not going:
                continue
            parts = _parts(going, self.runtime.scheduler.max_batch_size)  # 1: a call per stream
            if len(parts) == 1:
                await self._step(going)
            else:
                await asyncio.gather(*(self._step(part) for part in parts))

    async def _step(self, going: list[_Rows]) -> None:
        """One batched step for `going`: each generation's next logits (and attention), each
        search's live beams' next logits."""
        slots = np.array([slot for rows in going for slot in rows.slots], dtype=np.int64)
        try:
            out = await self.runtime.step(self.role, slots, self._feeds(going))
        except Exception as error:  # the step failed: so do the streams that took it
            for rows in going:
                self._leave(rows.owner)
                if not rows.owner.done.done():
                    rows.owner.done.set_exception(error)
            return
        logits = out["logits"]
        logits = logits[:, -1] if logits.ndim == 3 else logits  # lm_step: (B, T, V)
        start = 0
        for rows in going:
            owner, end = rows.owner, start + len(rows.slots)
            if isinstance(owner, Search):
                owner.logits = logits[start:end]
            else:
                owner.logits = logits[start]
                if owner.with_attention:
                    width = owner.context["src_mask"].shape[1]
                    owner.attention = out["attention"][start, :width].copy()  # (S,)
            start = end

    def _feeds(self, going: list[_Rows]) -> Arrays:
        """The step's inputs: the tokens `(B, 1)` and every row's context, stacked (sources
        padded to the longest; the mask's padding is False, so attention ignores it)."""
        tokens = [token for rows in going for token in rows.tokens]
        feeds = {self.token_input: np.array(tokens, dtype=np.int64)[:, None]}
        for name in going[0].context:
            parts = [rows.context[name] for rows in going]
            if len(parts) == 1:
                feeds[name] = parts[0]
            else:  # (n, S, ...) per stream: the source axis is 1
                width = max(part.shape[1] for part in parts)
                feeds[name] = stack_padded(parts, 1, width, 0)
        return feeds

    def _survivors(self, searches: list[Search]) -> list[_Rows]:
        """Every search's next survivors, from one log-softmax over all their live beams; the
        survivors' states move into their beams' slots with one copy. Returns the searches that
        go on, with their rows for the next step; the others finish."""
        if not searches:
            return []
        logprobs = log_softmax(np.concatenate([s.logits for s in searches]))  # (rows, V)
        going, sources, targets = [], [], []
        start = 0
        for search in searches:
            end = start + len(search.logits)
            parents = search.beam.advance(logprobs[start:end])
            start = end
            if search.beam.done or search.is_stale():
                search.finish()
                continue
            live = len(search.beam.live)
            sources.append(search.slots[np.array(parents)])
            targets.append(search.slots[:live])
            context = {k: np.repeat(v, live, axis=0) for k, v in search.context.items()}
            tokens = [h.tokens[-1] for h in search.beam.live]
            going.append(_Rows(search, search.slots[:live].tolist(), tokens, context))
        if sources:
            self.runtime.pool.copy(np.concatenate(sources), np.concatenate(targets))
        return going

    def _choose(self, batch: list[Generation]) -> list[_Rows]:
        """Each generation's next token, chosen for the whole batch at once; returns the ones
        that go on, with the token to feed."""
        if not batch:
            return []
        logits = np.stack([g.logits for g in batch])  # (B, V)
        early = [row for row, g in enumerate(batch) if g.index < g.min_tokens]
        if early:  # too soon to end: no end of sequence for these rows
            logits[early, [batch[row].eos_id for row in early]] = -np.inf
        tokens, logprobs = _greedy_rows(logits)
        going: list[_Rows] = []
        for row, generation in enumerate(batch):
            if not generation.sampler.params.greedy:
                tokens[row], logprobs[row] = generation.sampler.choose(logits[row])
            token = int(tokens[row])
            reason = self._advance(generation, token, float(logprobs[row]))
            if reason is None:
                going.append(_Rows(generation, [generation.slot], [token], generation.context))
            else:
                generation.finish(reason)
        return going

    def _advance(self, generation: Generation, token: int, logprob: float) -> FinishReason | None:
        """Emit `token` for `generation`; the reason it ends here, if it does."""
        if generation.is_stale():
            return FinishReason.SUPERSEDED
        if token == generation.eos_id:
            return FinishReason.STOP
        generation.clock.mark()
        piece = generation.detok.add(token)
        generation.emit(TokenEvent(generation.index, token, piece, logprob, generation.attention))
        generation.index += 1
        if generation.detok.ends_with(generation.stop, at_least=generation.min_tokens):
            return FinishReason.STOP
        if generation.index >= generation.max_tokens:
            return FinishReason.LENGTH
        return None


def _parts(going: list[_Rows], size: int) -> list[list[_Rows]]:
    """`going` in consecutive parts of at most `size` rows (a stream's rows stay together; a
    stream with more rows than `size` is a part of its own)."""
    parts: list[list[_Rows]] = [[]]
    rows = 0
    for entry in going:
        if parts[-1] and rows + len(entry.slots) > size:
            parts.append([])
            rows = 0
        parts[-1].append(entry)
        rows += len(entry.slots)
    return parts


_TOKEN_INPUT = {"lm_step": "tokens", "decoder_step": "prev"}  # each decode graph's token input


def _greedy_rows(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`logits: (B, V)` -> each row's most probable token and its log-probability (the greedy
    choice of `decoding.greedy`, row by row, in one pass)."""
    tokens = logits.argmax(axis=1)
    best = logits[np.arange(len(logits)), tokens].astype(np.float64)
    shifted = logits.astype(np.float64) - best[:, None]
    return tokens, -np.log(np.exp(shifted).sum(axis=1))
