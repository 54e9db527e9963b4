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

This is vLLM V1's shape on a small scale: per stream, nothing waits and nothing wakes per token;
the only per-row work is what cannot be batched (detokenization and stop strings).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from services.decoding import Sampler
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
    attention: tuple[float, ...] = ()
    index: int = 0
    done: asyncio.Future[FinishReason] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()

    def finish(self, reason: FinishReason) -> None:
        if not self.done.done():
            self.done.set_result(reason)


class Decoder:
    """The decode loop of one model: `lm_step` (language models) or `decoder_step` (the
    translation decoder), whichever its bundle has."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        graphs = {g.role for g in runtime.model.bundle.manifest.graphs}
        self.role = "decoder_step" if "decoder_step" in graphs else "lm_step"
        self.token_input = _TOKEN_INPUT[self.role]
        self.live: list[Generation] = []  # their logits are fresh: a token to choose
        self.ready: list[tuple[Generation, int]] = []  # chosen on joining: a step to take
        self._task: asyncio.Task[None] | None = None

    async def run(self, generation: Generation) -> FinishReason:
        """Decode `generation` to its end; its token events are emitted as they are chosen.

        Its first token is chosen at once, in the caller's turn (time to first token); the loop
        takes it from there.
        """
        self.ready += self._choose([generation])
        if self.ready and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._loop())
        try:
            return await generation.done
        finally:  # finished, failed or cancelled: it takes no further step
            self.live = [g for g in self.live if g is not generation]
            self.ready = [(g, t) for g, t in self.ready if g is not generation]

    async def _loop(self) -> None:
        while self.live or self.ready:
            going, self.ready = self.ready + self._choose(self.live), []
            self.live = [g for g, _ in going]  # streams that join during the step come next turn
            if not going:
                continue
            size = self.runtime.scheduler.max_batch_size  # 1: batching off, a call per stream
            if len(going) <= size:
                await self._step(going)
            else:
                parts = [going[start : start + size] for start in range(0, len(going), size)]
                await asyncio.gather(*(self._step(part) for part in parts))

    async def _step(self, going: list[tuple[Generation, int]]) -> None:
        """One batched step for `going`: each generation's next logits (and attention)."""
        slots = np.array([g.slot for g, _ in going], dtype=np.int64)
        try:
            out = await self.runtime.step(self.role, slots, self._feeds(going))
        except Exception as error:  # the step failed: so do the streams that took it
            for generation, _ in going:
                if not generation.done.done():
                    generation.done.set_exception(error)
            return
        logits = out["logits"]
        logits = logits[:, -1] if logits.ndim == 3 else logits  # lm_step: (B, T, V)
        for row, (generation, _) in enumerate(going):
            generation.logits = logits[row]
            if generation.with_attention:
                width = generation.context["src_mask"].shape[1]
                generation.attention = tuple(out["attention"][row, :width].tolist())

    def _feeds(self, going: list[tuple[Generation, int]]) -> Arrays:
        """The step's inputs: the tokens `(B, 1)` and every row's context, stacked (sources
        padded to the longest; the mask's padding is False, so attention ignores it)."""
        feeds = {self.token_input: np.array([[token] for _, token in going], dtype=np.int64)}
        for name in going[0][0].context:
            parts = [g.context[name] for g, _ in going]
            if len(parts) == 1:
                feeds[name] = parts[0]
            else:  # (1, S, ...) per row: the source axis is 1
                width = max(part.shape[1] for part in parts)
                feeds[name] = stack_padded(parts, 1, width, 0)
        return feeds

    def _choose(self, batch: list[Generation]) -> list[tuple[Generation, int]]:
        """Each generation's next token, chosen for the whole batch at once; returns the ones
        that go on, with the token to feed."""
        if not batch:
            return []
        logits = np.stack([g.logits for g in batch])  # (B, V)
        tokens, logprobs = _greedy_rows(logits)
        going = []
        for row, generation in enumerate(batch):
            if not generation.sampler.params.greedy:
                tokens[row], logprobs[row] = generation.sampler.choose(generation.logits)
            token = int(tokens[row])
            reason = self._advance(generation, token, float(logprobs[row]))
            if reason is None:
                going.append((generation, token))
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
        if any(generation.detok.output.endswith(s) for s in generation.stop):
            return FinishReason.STOP
        if generation.index >= generation.max_tokens:
            return FinishReason.LENGTH
        return None


_TOKEN_INPUT = {"lm_step": "tokens", "decoder_step": "prev"}  # each decode graph's token input


def _greedy_rows(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`logits: (B, V)` -> each row's most probable token and its log-probability (the greedy
    choice of `decoding.greedy`, row by row, in one pass)."""
    tokens = logits.argmax(axis=1)
    best = logits[np.arange(len(logits)), tokens].astype(np.float64)
    shifted = logits.astype(np.float64) - best[:, None]
    return tokens, -np.log(np.exp(shifted).sum(axis=1))
