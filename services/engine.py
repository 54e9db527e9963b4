"""The serving engine: turns a request into a stream of events by stepping ONNX graphs.

Every stream leases slots in its model's state pool and asks the model's scheduler for steps, so
the steps of all live streams run as batched ONNX Runtime calls (continuous batching; see
`scheduler.py`). A stream is an async generator: a cancelled call or an expired deadline stops it
at its next `await`, and its `with runtime.lease(...)` block gives the slots back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from services.collector import collect
from services.decoding import BeamSearch, Hypothesis, Sampler, greedy, log_softmax
from services.errors import InvalidArgument, Unavailable
from services.events import Event, Finished, FinishReason, RunningLabel, Suggestion, TokenEvent
from services.model import Arrays, LoadedModel, ModelRegistry
from services.requests import CompleteParams, TranslateParams
from services.runtime import EngineConfig, Runtime
from services.scheduler import BatchObserver


class Clock:
    """Timings of one stream, measured from the request's arrival."""

    def __init__(self, arrived: float) -> None:
        self.arrived = arrived
        self.started: float | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.events = 0

    def start(self) -> None:
        self.started = time.perf_counter()

    def mark(self) -> None:
        """An event is about to be streamed."""
        self.last = time.perf_counter()
        self.first = self.first or self.last
        self.events += 1

    def finish(self, model: LoadedModel, **fields: object) -> Finished:
        now = time.perf_counter()
        started = self.started or now
        first = self.first or now
        gaps = (self.last - first) / (self.events - 1) if self.last and self.events > 1 else 0.0
        return Finished(
            model=model.name,
            version=model.version,
            queue_seconds=started - self.arrived,
            time_to_first_token_seconds=first - self.arrived,
            total_seconds=now - self.arrived,
            mean_inter_token_seconds=gaps,
            **fields,  # type: ignore[arg-type]
        )


class RunningPool:
    """A text's label logits as its tokens arrive, pooled as the classifier was trained:
    the latest logits (`last`), their running mean, or their running per-class maximum."""

    def __init__(self, pooling: str) -> None:
        if pooling not in ("", "last", "mean", "max"):
            raise ValueError(f"unknown pooling {pooling!r} in the manifest")
        self.pooling = pooling or "last"
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, logits: np.ndarray) -> np.ndarray:
        self.count += 1
        if self.total is None or self.pooling == "last":
            self.total = logits.astype(np.float64)
        elif self.pooling == "mean":
            self.total = self.total + logits
        else:
            self.total = np.maximum(self.total, logits)
        return self.total / self.count if self.pooling == "mean" else self.total


class Detokenizer:
    """Incremental detokenization: each token's text is what it adds to the decoded output.

    Decodes a window of the last few tokens, not the whole sequence (a completion's prefix is the
    whole typed text): a token's piece is `decode(window + token)` minus `decode(window)`, which
    keeps the spacing rules of every decoder (word-level joins, BPE's `▁`, characters). Recur's
    tokenizers are not byte-level, so no token ends inside a character. The window holds
    `WINDOW` to `2 * WINDOW` tokens and slides in jumps: while it stays put, a token's
    `decode(window)` is the previous token's `decode(window + token)`, so most tokens cost one
    decode.
    """

    WINDOW = 6  # tokens of context each decode sees

    def __init__(self, model: LoadedModel, prefix: list[int]) -> None:
        self.tokenizer = model.tokenizer
        self.ids = list(prefix)
        self.text = self.tokenizer.decode(self.ids) if prefix else ""
        self.start = len(self.text)
        self.read = len(self.ids)  # tokens whose text is in self.text
        self.context = max(0, self.read - self.WINDOW)  # where the decoded window starts
        self._decoded: tuple[int, int, str] | None = None  # (context, read, decode of that span)

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.context, self.read)
        after = self._decode(self.context, len(self.ids))
        if len(after) <= len(before):
            return ""  # a token that adds no text (yet): the window keeps it
        piece = after[len(before) :]
        self.text += piece
        self.read = len(self.ids)
        if self.read - self.context > 2 * self.WINDOW:  # slide by WINDOW at a time, so that
            self.context = self.read - self.WINDOW  # most tokens' `before` is the last `after`
        return piece

    def _decode(self, start: int, end: int) -> str:
        """`decode(ids[start:end])`; the last call's span again costs nothing (a token's
        `after` is the next token's `before` until the window slides)."""
        if self._decoded is not None and self._decoded[:2] == (start, end):
            return self._decoded[2]
        text: str = self.tokenizer.decode(self.ids[start:end])
        self._decoded = (start, end, text)
        return text

    @property
    def output(self) -> str:
        return self.text[self.start :]


class Engine:
    """Streams for every task over the models of a registry."""

    def __init__(
        self,
        registry: ModelRegistry,
        cfg: EngineConfig | None = None,
        *,
        workers: int = 2,
        observe: BatchObserver | None = None,
        on_slots: Callable[[Runtime], None] | None = None,
    ) -> None:
        self.registry = registry
        self.cfg = cfg or EngineConfig(concurrency=workers)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ort")
        self.observe = observe
        self.on_slots = on_slots
        self.ready = True  # False while the server loads and warms its models
        self.closing = False  # True once the server drains: new streams are refused
        self._runtimes: dict[LoadedModel, Runtime] = {}

    def runtime(self, model: LoadedModel) -> Runtime:
        if model not in self._runtimes:
            self._runtimes[model] = Runtime(
                model, self.executor, self.cfg, observe=self.observe, on_slots=self.on_slots
            )
        return self._runtimes[model]

    def forget(self, model: LoadedModel) -> None:
        """Drop an unloaded model's runtime (streams still on it keep their own reference)."""
        self._runtimes.pop(model, None)

    def resolve(self, name: str, task: str) -> LoadedModel:
        if not self.ready:
            raise Unavailable("the server is still loading its models; retry shortly")
        if self.closing:
            raise Unavailable("the server is shutting down; retry (another replica)")
        return self.registry.resolve(name, task)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def translate(
        self,
        model: LoadedModel,
        text: str,
        params: TranslateParams,
        *,
        arrived: float,
        interval: int = 1,
    ) -> AsyncIterator[list[Event]]:
        """Translation, one event per target token (beam search: the best, once found), handed
        over in messages of at least `interval` tokens after the first (see `collector`)."""
        return collect(
            self._translate(model, text, params, arrived), interval=interval, counts=_token
        )

    def analyze(
        self, model: LoadedModel, text: str, *, arrived: float, interval: int = 1
    ) -> AsyncIterator[list[Event]]:
        """Running sentiment: the label and probabilities after every input token."""
        return collect(self._analyze(model, text, arrived), interval=interval, counts=_token)

    def complete(
        self,
        model: LoadedModel,
        text: str,
        params: CompleteParams,
        *,
        arrived: float,
        interval: int = 1,
    ) -> AsyncIterator[list[Event]]:
        """Completion of a prefix: greedy or sampled tokens, then suggestions by beam search."""
        return collect(
            self._complete(model, text, params, arrived), interval=interval, counts=_token
        )

    async def _translate(
        self, model: LoadedModel, text: str, params: TranslateParams, arrived: float
    ) -> AsyncIterator[Event]:
        encoding = model.tokenizer.encode(text)
        src = np.array([encoding.ids], dtype=np.int64)  # (1, S)
        limit = params.limit(src.shape[1])
        runtime, clock = self.runtime(model), Clock(arrived)
        with runtime.lease(params.beam_size) as slots:
            clock.start()
            encoded = await runtime.step(
                "encoder", slots[:1], {"src": src, "src_len": np.array([src.shape[1]])}
            )
            memory = encoded["memory"]  # (1, S, E)
            mask = np.ones((1, src.shape[1]), dtype=bool)

            def feeds(prev: np.ndarray) -> Arrays:
                rows = len(prev)
                if rows == 1:  # greedy, and a beam's first step: no copies
                    return {"prev": prev, "memory": memory, "src_mask": mask}
                return {
                    "prev": prev,
                    "memory": np.repeat(memory, rows, axis=0),
                    "src_mask": np.repeat(mask, rows, axis=0),
                }

            if params.beam_size > 1:
                beam = BeamSearch(params.beam_size, model.eos_id, limit, params.length_penalty)
                bos = np.array([[model.bos_id]], dtype=np.int64)
                first = await runtime.step("decoder_step", slots[:1], feeds(bos))
                best = (await self._beam(runtime, "decoder_step", beam, slots, first, feeds))[0]
                events = self._replay(model, best, clock)
            else:
                events = self._greedy_translation(runtime, slots[:1], feeds, limit, params, clock)
            pieces, reason = [], FinishReason.LENGTH
            async for event in events:
                if isinstance(event, FinishReason):
                    reason = event
                    break
                pieces.append(event.text)
                yield event
        yield clock.finish(
            model,
            reason=reason,
            text="".join(pieces),
            input_tokens=src.shape[1],
            output_tokens=len(pieces),
            source_tokens=tuple(encoding.tokens),
        )

    async def _greedy_translation(
        self,
        runtime: Runtime,
        slots: np.ndarray,
        feeds: Callable[[np.ndarray], Arrays],
        limit: int,
        params: TranslateParams,
        clock: Clock,
    ) -> AsyncIterator[TokenEvent | FinishReason]:
        model = runtime.model
        detok = Detokenizer(model, [])
        prev = np.array([[model.bos_id]], dtype=np.int64)
        for index in range(limit):
            out = await runtime.step("decoder_step", slots, feeds(prev))
            token, logprob = greedy(out["logits"][0])
            if token == model.eos_id:
                yield FinishReason.STOP
                return
            attention = tuple(out["attention"][0].tolist()) if params.include_attention else ()
            clock.mark()
            yield TokenEvent(index, token, detok.add(token), logprob, attention)
            prev = np.array([[token]], dtype=np.int64)
        yield FinishReason.LENGTH

    async def _replay(
        self, model: LoadedModel, best: Hypothesis, clock: Clock
    ) -> AsyncIterator[TokenEvent | FinishReason]:
        """Stream a finished hypothesis token by token."""
        detok = Detokenizer(model, [])
        for index, (token, logprob) in enumerate(
            zip(best.tokens, best.token_logprobs, strict=True)
        ):
            clock.mark()
            yield TokenEvent(index, token, detok.add(token), logprob)
        yield FinishReason.STOP if best.finished else FinishReason.LENGTH

    async def _beam(
        self,
        runtime: Runtime,
        role: str,
        beam: BeamSearch,
        slots: np.ndarray,
        first: Arrays,
        feeds: Callable[[np.ndarray], Arrays],
    ) -> list[Hypothesis]:
        """Run `beam` from its root, whose state is in `slots[0]` and logits in `first`.

        Beam `i` lives in `slots[i]`; after each step the survivors take their parents' state.
        """
        out = first
        while True:
            logits = out["logits"].reshape(len(beam.live), -1)  # (live, V)
            parents = beam.advance(log_softmax(logits))
            if beam.done:
                return beam.ranked()
            live = len(beam.live)
            runtime.pool.copy(slots[np.array(parents)], slots[:live])
            prev = np.array([[h.tokens[-1]] for h in beam.live], dtype=np.int64)
            out = await runtime.step(role, slots[:live], feeds(prev))

    async def _analyze(self, model: LoadedModel, text: str, arrived: float) -> AsyncIterator[Event]:
        encoding = model.tokenizer.encode(text)
        if not encoding.ids:
            raise InvalidArgument("text", "has no tokens for this model's tokenizer")
        runtime, clock = self.runtime(model), Clock(arrived)
        ids, chunk = encoding.ids, runtime.prefill_chunk
        pooled = RunningPool(model.bundle.manifest.pooling)
        with runtime.lease() as slots:
            clock.start()
            for start in range(0, len(ids), chunk):
                tokens = np.array([ids[start : start + chunk]], dtype=np.int64)
                out = await runtime.step("classifier_step", slots, {"tokens": tokens})
                for index, logits in enumerate(out["logits"][0], start):  # (C,) per token
                    p = np.exp(log_softmax(pooled.add(logits)))
                    clock.mark()
                    label = model.labels[int(p.argmax())]
                    piece = encoding.tokens[index]
                    yield RunningLabel(index, ids[index], piece, label, tuple(p.tolist()))
        final = p
        yield clock.finish(
            model,
            reason=FinishReason.STOP,
            text=model.labels[int(final.argmax())],
            input_tokens=len(encoding.ids),
            output_tokens=len(encoding.ids),
            probabilities=tuple(final.tolist()),
            labels=model.labels,
        )

    async def _complete(
        self, model: LoadedModel, text: str, params: CompleteParams, arrived: float
    ) -> AsyncIterator[Event]:
        prefix = [model.bos_id, *model.tokenizer.encode(text).ids]
        runtime, clock = self.runtime(model), Clock(arrived)
        with runtime.lease() as slots:
            clock.start()
            logits = (await runtime.prefill("lm_step", slots, prefix))[-1][-1]
            state = runtime.pool.read(slots)  # after the prefix, for the suggestions
            async for event in self.generate(
                runtime, slots, logits, prefix=prefix, params=params, clock=clock
            ):
                if isinstance(event, Finished) and params.suggestions:
                    found = await self.suggest(runtime, state, logits, prefix, params)
                    event = replace(event, suggestions=found)
                yield event

    async def generate(
        self,
        runtime: Runtime,
        slots: np.ndarray,
        logits: np.ndarray,
        *,
        prefix: list[int],
        params: CompleteParams,
        clock: Clock,
        is_stale: Callable[[], bool] = lambda: False,
    ) -> AsyncIterator[Event]:
        """Language-model decoding from `logits: (V,)` with the state after `prefix` in `slots`."""
        model = runtime.model
        sampler = Sampler(params.sampling)
        detok = Detokenizer(model, prefix)
        reason = FinishReason.LENGTH
        for index in range(params.max_tokens):
            if is_stale():
                reason = FinishReason.SUPERSEDED
                break
            token, logprob = sampler.choose(logits)
            if token == model.eos_id:
                reason = FinishReason.STOP
                break
            clock.mark()
            yield TokenEvent(index, token, detok.add(token), logprob)
            if any(detok.output.endswith(s) for s in params.stop):
                reason = FinishReason.STOP
                break
            if index + 1 < params.max_tokens:
                out = await runtime.step(
                    "lm_step", slots, {"tokens": np.array([[token]], dtype=np.int64)}
                )
                logits = out["logits"][0, -1]
        yield clock.finish(
            model,
            reason=reason,
            text=detok.output,
            input_tokens=len(prefix) - 1,
            output_tokens=len(detok.ids) - len(prefix),
        )

    async def suggest(
        self,
        runtime: Runtime,
        state: Arrays,
        logits: np.ndarray,
        prefix: list[int],
        params: CompleteParams,
    ) -> tuple[Suggestion, ...]:
        """The `params.suggestions` most probable completions of `prefix`, by beam search."""
        model = runtime.model
        beam = BeamSearch(params.suggestions, model.eos_id, params.max_tokens)
        with runtime.lease(params.suggestions) as slots:
            runtime.pool.write(slots[:1], state)

            def feeds(prev: np.ndarray) -> Arrays:
                return {"tokens": prev}

            found = await self._beam(runtime, "lm_step", beam, slots, {"logits": logits}, feeds)
        start = len(model.tokenizer.decode(prefix))
        return tuple(
            Suggestion(model.tokenizer.decode([*prefix, *h.tokens])[start:], h.logprob)
            for h in found
        )


def _token(event: Event) -> bool:
    return not isinstance(event, Finished)
