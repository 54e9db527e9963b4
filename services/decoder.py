"""The engine's decode loop: one model step for every stream that is generating, and the whole
batch's outputs processed at once.

A stream that has read its prompt hands its generation to the model's `Decoder` and waits once,
for the end. Until then the decoder owns it: each turn it takes every live generation's
next-token logits as one `(B, V)` array, chooses the greedy rows' tokens with one argmax and one
log-sum-exp over the batch (sampled rows draw from their own generators), then for each row
detokenizes, emits the token event into the stream's collector and applies the finish rules
(end of sequence, stop strings, `max_tokens`, superseded). The rows still going take one batched
`lm_step` together. Generations join and leave between turns (continuous batching), and the
scheduler still batches the decoder's step with other streams' one-token steps.

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
    index: int = 0
    done: asyncio.Future[FinishReason] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()

    def finish(self, reason: FinishReason) -> None:
        if not self.done.done():
            self.done.set_result(reason)


class Decoder:
    """The decode loop of one language model (graph `lm_step`)."""

    ROLE = "lm_step"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
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
        """One batched `lm_step` for `going`: each generation's next logits."""
        slots = np.array([g.slot for g, _ in going], dtype=np.int64)
        tokens = np.array([[token] for _, token in going], dtype=np.int64)  # (B, 1)
        try:
            out = await self.runtime.step(self.ROLE, slots, {"tokens": tokens})
        except Exception as error:  # the step failed: so do the streams that took it
            for generation, _ in going:
                if not generation.done.done():
                    generation.done.set_exception(error)
            return
        logits = out["logits"][:, -1]  # (B, V)
        for row, (generation, _) in enumerate(going):
            generation.logits = logits[row]

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
        generation.emit(TokenEvent(generation.index, token, piece, logprob))
        generation.index += 1
        if any(generation.detok.output.endswith(s) for s in generation.stop):
            return FinishReason.STOP
        if generation.index >= generation.max_tokens:
            return FinishReason.LENGTH
        return None


def _greedy_rows(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`logits: (B, V)` -> each row's most probable token and its log-probability (the greedy
    choice of `decoding.greedy`, row by row, in one pass)."""
    tokens = logits.argmax(axis=1)
    best = logits[np.arange(len(logits)), tokens].astype(np.float64)
    shifted = logits.astype(np.float64) - best[:, None]
    return tokens, -np.log(np.exp(shifted).sum(axis=1))
