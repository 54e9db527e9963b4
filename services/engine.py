"""The serving engine: turns a request into a stream of events by stepping ONNX graphs.

Each stream runs its graphs in a small thread pool (ONNX Runtime releases the GIL), so the event
loop never blocks. Decoding is greedy. Cancellation is checked between steps for free: a stream
is an async generator, so a cancelled call stops it at its next `await`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.events import Event, Finished, FinishReason, RunningLabel, TokenEvent
from services.model import Arrays, LoadedModel, ModelRegistry


@dataclass(frozen=True)
class Clock:
    """Timings of one stream, measured from the request's arrival."""

    arrived: float
    started: float | None = None
    first: float | None = None

    def finish(self, model: LoadedModel, **fields: object) -> Finished:
        now = time.perf_counter()
        started = self.started if self.started is not None else now
        first = self.first if self.first is not None else now
        return Finished(
            model=model.name,
            version=model.version,
            queue_seconds=started - self.arrived,
            time_to_first_token_seconds=first - self.arrived,
            total_seconds=now - self.arrived,
            **fields,  # type: ignore[arg-type]
        )


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


class Detokenizer:
    """Incremental detokenization: each token's text is what it adds to the decoded output."""

    def __init__(self, model: LoadedModel, prefix: list[int]) -> None:
        self.tokenizer = model.tokenizer
        self.ids = list(prefix)
        self.start = len(self.tokenizer.decode(self.ids)) if prefix else 0
        self.text = self.tokenizer.decode(self.ids) if prefix else ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text: str = self.tokenizer.decode(self.ids)
        piece = text[len(self.text) :]
        self.text = text
        return piece

    @property
    def output(self) -> str:
        return self.text[self.start :]


class Engine:
    """Streams for every task over the models of a registry."""

    def __init__(self, registry: ModelRegistry, *, workers: int = 2) -> None:
        self.registry = registry
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ort")

    async def run(self, model: LoadedModel, role: str, feeds: Arrays) -> Arrays:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, model.run, role, feeds)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def translate(
        self,
        model: LoadedModel,
        text: str,
        *,
        max_tokens: int,
        include_attention: bool,
        arrived: float,
    ) -> AsyncIterator[Event]:
        """Greedy translation, one event per target token."""
        encoding = model.tokenizer.encode(text)
        src = np.array([encoding.ids], dtype=np.int64)  # (1, S)
        clock = Clock(arrived, started=time.perf_counter())
        encoded = await self.run(
            model, "encoder", {"src": src, "src_len": np.array([src.shape[1]])}
        )
        feeds = {
            "prev": np.array([[model.bos_id]], dtype=np.int64),
            **model.encoder_state(encoded),
            "memory": encoded["memory"],
            "src_mask": np.ones(src.shape, dtype=bool),
        }
        detok = Detokenizer(model, [])
        reason = FinishReason.LENGTH
        limit = max_tokens or 2 * src.shape[1] + 10
        for index in range(limit):
            out = await self.run(model, "decoder_step", feeds)
            logprobs = log_softmax(out["logits"][0])
            token = int(logprobs.argmax())
            if token == model.eos_id:
                reason = FinishReason.STOP
                break
            attention = tuple(out["attention"][0].tolist()) if include_attention else ()
            if clock.first is None:
                clock = Clock(arrived, clock.started, time.perf_counter())
            yield TokenEvent(index, token, detok.add(token), float(logprobs[token]), attention)
            feeds = {**feeds, "prev": np.array([[token]], dtype=np.int64), **model.next_state(out)}
        yield clock.finish(
            model,
            reason=reason,
            text=detok.output,
            input_tokens=src.shape[1],
            output_tokens=len(detok.ids),
            source_tokens=tuple(encoding.tokens),
        )

    async def analyze(
        self, model: LoadedModel, text: str, *, arrived: float
    ) -> AsyncIterator[Event]:
        """Running sentiment: the label and probabilities after every input token."""
        encoding = model.tokenizer.encode(text)
        tokens = np.array([encoding.ids], dtype=np.int64)  # (1, T)
        clock = Clock(arrived, started=time.perf_counter())
        out = await self.run(model, "classifier_step", {"tokens": tokens, **model.zero_state(1)})
        probabilities = np.exp(log_softmax(out["logits"][0]))  # (T, C)
        clock = Clock(arrived, clock.started, time.perf_counter())
        for index, (token, piece) in enumerate(zip(encoding.ids, encoding.tokens, strict=True)):
            p = probabilities[index]
            label = model.labels[int(p.argmax())]
            yield RunningLabel(index, token, piece, label, tuple(p.tolist()))
        final = probabilities[-1]
        yield clock.finish(
            model,
            reason=FinishReason.STOP,
            text=model.labels[int(final.argmax())],
            input_tokens=len(encoding.ids),
            output_tokens=len(encoding.ids),
            probabilities=tuple(final.tolist()),
            labels=model.labels,
        )

    async def complete(
        self, model: LoadedModel, text: str, *, max_tokens: int, arrived: float
    ) -> AsyncIterator[Event]:
        """Greedy completion of a prefix."""
        prefix = [model.bos_id, *model.tokenizer.encode(text).ids]
        clock = Clock(arrived, started=time.perf_counter())
        tokens = np.array([prefix], dtype=np.int64)
        out = await self.run(model, "lm_step", {"tokens": tokens, **model.zero_state(1)})
        state = model.next_state(out)
        async for event in self.generate(
            model, out["logits"][0, -1], state, prefix=prefix, max_tokens=max_tokens, clock=clock
        ):
            yield event

    async def generate(
        self,
        model: LoadedModel,
        logits: np.ndarray,
        state: Arrays,
        *,
        prefix: list[int],
        max_tokens: int,
        clock: Clock,
        stale: asyncio.Event | None = None,
    ) -> AsyncIterator[Event]:
        """Greedy language-model decoding from `logits` (V,) and `state` after `prefix`."""
        detok = Detokenizer(model, prefix)
        reason = FinishReason.LENGTH
        for index in range(max_tokens):
            if stale is not None and stale.is_set():
                reason = FinishReason.SUPERSEDED
                break
            logprobs = log_softmax(logits)
            token = int(logprobs.argmax())
            if token == model.eos_id:
                reason = FinishReason.STOP
                break
            if clock.first is None:
                clock = Clock(clock.arrived, clock.started, time.perf_counter())
            yield TokenEvent(index, token, detok.add(token), float(logprobs[token]))
            feeds = {"tokens": np.array([[token]], dtype=np.int64), **state}
            out = await self.run(model, "lm_step", feeds)
            logits = out["logits"][0, -1]
            state = model.next_state(out)
        yield clock.finish(
            model,
            reason=reason,
            text=detok.output,
            input_tokens=len(prefix) - 1,
            output_tokens=len(detok.ids) - len(prefix),
        )
