"""The serving engine: turns a request into a stream of events by stepping ONNX graphs.

Every stream leases slots in its model's state pool and runs as a task of its own (see
`collector.py`) that puts its events into its collector. It reads its prompt with steps from the
model's scheduler, which batches the steps of all live streams into ONNX Runtime calls
(continuous batching; `scheduler.py`), and hands token-by-token generation and beam search to
the model's decode loop (`decoder.py`), which advances every generating stream and every search
with one step and processes the whole batch's outputs at once. A cancelled call or an expired
deadline stops the stream's task at its next `await`, and its `with runtime.lease(...)` block
gives the slots back.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from services import suggestions
from services.collector import Collector, collect
from services.decoder import Generation, Search
from services.decoding import BeamSearch, Hypothesis, Sampler, SamplingParams, log_softmax
from services.detokenizer import Detokenizer
from services.errors import InvalidArgument, Unavailable
from services.events import Event, Finished, FinishReason, RunningLabel, Suggestion, TokenEvent
from services.model import Arrays, LoadedModel, ModelRegistry
from services.requests import CompleteParams, TranslateParams
from services.runtime import EngineConfig, Runtime
from services.scheduler import BatchObserver
from services.timing import Clock


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


class Engine:
    """Streams for every task over the models of a registry."""

    def __init__(
        self,
        registry: ModelRegistry,
        cfg: EngineConfig | None = None,
        *,
        observe: BatchObserver | None = None,
        on_slots: Callable[[Runtime], None] | None = None,
    ) -> None:
        self.registry = registry
        self.cfg = cfg or EngineConfig()
        self.executor = ThreadPoolExecutor(
            max_workers=self.cfg.executor_workers, thread_name_prefix="ort"
        )
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
    ) -> AsyncGenerator[list[Event], None]:
        """Translation, one event per target token (beam search: the best, once found), handed
        over in messages of at least `interval` tokens after the first (see `collector`)."""
        stream = functools.partial(self._translate, model, text, params, arrived)
        return collect(stream, interval=interval, counts=_token)

    def analyze(
        self, model: LoadedModel, text: str, *, arrived: float, interval: int = 1
    ) -> AsyncGenerator[list[Event], None]:
        """Running sentiment: the label and probabilities after every input token."""
        stream = functools.partial(self._analyze, model, text, arrived)
        return collect(stream, interval=interval, counts=_token)

    def complete(
        self,
        model: LoadedModel,
        text: str,
        params: CompleteParams,
        *,
        arrived: float,
        interval: int = 1,
    ) -> AsyncGenerator[list[Event], None]:
        """Completion of a prefix: its tokens, then a final event with its suggestions (`answer`:
        ranked with the model's popular-query index where it has one)."""
        stream = functools.partial(self._complete, model, text, params, arrived)
        return collect(stream, interval=interval, counts=_token)

    async def _translate(
        self,
        model: LoadedModel,
        text: str,
        params: TranslateParams,
        arrived: float,
        out: Collector[Event],
    ) -> None:
        encoding = model.tokenizer.encode(text)
        src = np.array([encoding.ids], dtype=np.int64)  # (1, S)
        limit = params.limit(src.shape[1])
        runtime, clock = self.runtime(model), Clock(arrived)
        detok = Detokenizer(model, [])
        with runtime.lease(params.beam_size) as slots:
            clock.start()
            encoded = await runtime.step(
                "encoder", slots[:1], {"src": src, "src_len": np.array([src.shape[1]])}
            )
            memory = encoded["memory"]  # (1, S, E)
            context = {"memory": memory, "src_mask": np.ones((1, src.shape[1]), dtype=bool)}
            bos = np.array([[model.bos_id]], dtype=np.int64)
            first = await runtime.step("decoder_step", slots[:1], {"prev": bos, **context})
            if params.beam_size > 1:
                beam = BeamSearch(
                    params.beam_size, model.eos_id, limit, params.length_penalty,
                    min_len=params.min_tokens,
                )  # fmt: skip
                search = Search(beam, slots, first["logits"], context)
                best = (await runtime.decoder.search(search))[0]
                for index, (token, logprob) in enumerate(
                    zip(best.tokens, best.token_logprobs, strict=True)
                ):
                    clock.mark()
                    out.put(TokenEvent(index, token, detok.add(token), logprob))
                reason = FinishReason.STOP if best.finished else FinishReason.LENGTH
            else:  # greedy: the model's decode loop takes it from the first logits
                generation = Generation(
                    slot=int(slots[0]),
                    logits=first["logits"][0],
                    sampler=Sampler(SamplingParams()),
                    detok=detok,
                    max_tokens=limit,
                    eos_id=model.eos_id,
                    stop=(),
                    emit=out.put,
                    clock=clock,
                    context=context,
                    with_attention=params.include_attention,
                    min_tokens=params.min_tokens,
                    attention=_attention(first, params.include_attention),
                )
                reason = await runtime.decoder.run(generation)
        out.put(
            clock.finish(
                model,
                reason=reason,
                text=detok.text,
                input_tokens=src.shape[1],
                output_tokens=len(detok.ids),
                source_tokens=tuple(encoding.tokens),
            )
        )

    async def _analyze(
        self, model: LoadedModel, text: str, arrived: float, out: Collector[Event]
    ) -> None:
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
                step = await runtime.step("classifier_step", slots, {"tokens": tokens})
                for index, logits in enumerate(step["logits"][0], start):  # (C,) per token
                    p = np.exp(log_softmax(pooled.add(logits)))
                    clock.mark()
                    label = model.labels[int(p.argmax())]
                    piece = encoding.tokens[index]
                    out.put(RunningLabel(index, ids[index], piece, label, tuple(p.tolist())))
        out.put(
            clock.finish(
                model,
                reason=FinishReason.STOP,
                text=model.labels[int(p.argmax())],
                input_tokens=len(encoding.ids),
                output_tokens=len(encoding.ids),
                probabilities=tuple(p.tolist()),
                labels=model.labels,
            )
        )

    async def _complete(
        self,
        model: LoadedModel,
        text: str,
        params: CompleteParams,
        arrived: float,
        out: Collector[Event],
    ) -> None:
        prefix = [model.bos_id, *model.tokenizer.encode(text).ids]
        runtime, clock = self.runtime(model), Clock(arrived)
        with runtime.lease() as slots:
            clock.start()
            logits = (await runtime.prefill("lm_step", slots, prefix))[-1][-1]
            final = await self.answer(
                runtime, slots, logits, text=text, prefix=prefix, params=params, clock=clock,
                emit=out.put,
            )  # fmt: skip
        out.put(final)

    async def answer(
        self,
        runtime: Runtime,
        slots: np.ndarray,
        logits: np.ndarray,
        *,
        text: str,
        prefix: list[int],
        params: CompleteParams,
        clock: Clock,
        emit: Callable[[Event], None],
        is_stale: Callable[[], bool] = lambda: False,
    ) -> Finished:
        """A completion of `text` (tokens `prefix`, the state after them in `slots[0]`, next
        logits `logits: (V,)`): token events go to `emit`; returns the final event, with
        `params.suggestions` suggestions (not emitted).

        When suggestions are asked for and the model has a popular-query index (and not
        `params.model_only`), they are ranked (`suggestions.py`) and a greedy request streams
        the best one (unless it is shorter than `params.min_tokens`: then the model decodes).
        Otherwise the model decodes the completion (`generate`) and its beam search gives the
        suggestions: a request without suggestions costs no beam.
        """
        model = runtime.model
        decode = functools.partial(
            self.generate, runtime, slots, logits, prefix=prefix, params=params, clock=clock,
            emit=emit, is_stale=is_stale,
        )  # fmt: skip
        if not params.suggestions:
            return await decode()
        state = runtime.pool.read(slots)  # after the prefix (generating moves the slot on)
        if model.popular is None or params.model_only:
            final = await decode()
            if final.reason != FinishReason.SUPERSEDED:
                found = await self.suggest(runtime, state, logits, prefix, params)
                final = replace(final, suggestions=found)
            return final
        ranked = await self.ranked(
            runtime, state, logits, text=text, prefix=prefix, params=params, is_stale=is_stale
        )
        if (
            params.sampling.greedy
            and ranked
            and len(ranked[0].candidate.tokens) >= params.min_tokens
        ):
            final = suggestions.replay(
                model, ranked[0].candidate, prefix, params, clock, emit, is_stale
            )
        else:
            final = await decode()
        if final.reason == FinishReason.SUPERSEDED:
            return final
        return replace(final, suggestions=tuple(r.suggestion for r in ranked[: params.suggestions]))

    async def ranked(
        self,
        runtime: Runtime,
        state: Arrays,
        logits: np.ndarray,
        *,
        text: str,
        prefix: list[int],
        params: CompleteParams,
        is_stale: Callable[[], bool] = lambda: False,
    ) -> list[suggestions.Ranked]:
        """The top `params.suggestions` (at least 1) of the index's (or the lent) and the beam's
        completions of `text`, ranked with the model's weights (`suggestions.py`). Where the
        index's (or the lent) completions are enough to fill the answer, the model only scores
        them: no beam search runs (its candidates did not change the ranked MRR,
        `docs/suggestions.md`, and it is most of a key's cost)."""
        model = runtime.model
        assert model.popular is not None
        n = max(params.suggestions, 1)
        query = suggestions.normal_form(model.tokenizer, text)
        indexed, lent = suggestions.candidates(model, query)
        texts = [*(completion for completion, _ in indexed), *(c.completion for c in lent)]
        if not suggestions.beam_needed(len(indexed), len(lent), n):
            scored = await suggestions.score(runtime, state, logits, texts)
            return suggestions.rank(model, query, {}, scored, n, indexed=indexed, lent=lent)
        width = max(n, model.candidates)
        try:
            async with asyncio.TaskGroup() as group:  # the scoring step rides beside the beam's
                search = group.create_task(
                    self._lm_beam(runtime, state, logits, width, params.max_tokens, is_stale)
                )
                scoring = group.create_task(suggestions.score(runtime, state, logits, texts))
        except ExceptionGroup as failed:  # the first failure itself (no free slot, ...), as an
            raise failed.exceptions[0] from None  # await of one would raise it
        beam = suggestions.from_beam(model, prefix, search.result())
        # a completion the beam found ranks with the beam's log-probability, as it always did
        scored = {
            completion: c for completion, c in scoring.result().items() if completion not in beam
        }
        return suggestions.rank(model, query, beam, scored, n, indexed=indexed, lent=lent)

    async def generate(
        self,
        runtime: Runtime,
        slots: np.ndarray,
        logits: np.ndarray,
        *,
        prefix: list[int],
        params: CompleteParams,
        clock: Clock,
        emit: Callable[[Event], None],
        is_stale: Callable[[], bool] = lambda: False,
    ) -> Finished:
        """Language-model decoding from `logits: (V,)` with the state after `prefix` in
        `slots`, by the model's decode loop: token events go to `emit` as they are chosen;
        returns the final event (not emitted)."""
        model = runtime.model
        detok = Detokenizer(model, prefix)
        generation = Generation(
            slot=int(slots[0]),
            logits=logits,
            sampler=Sampler(params.sampling),
            detok=detok,
            max_tokens=params.max_tokens,
            eos_id=model.eos_id,
            stop=params.stop,
            emit=emit,
            clock=clock,
            is_stale=is_stale,
            min_tokens=params.min_tokens,
        )
        reason = await runtime.decoder.run(generation)
        return suggestions.completion_final(model, clock, reason, detok, prefix)

    async def suggest(
        self,
        runtime: Runtime,
        state: Arrays,
        logits: np.ndarray,
        prefix: list[int],
        params: CompleteParams,
    ) -> tuple[Suggestion, ...]:
        """The `params.suggestions` most probable completions of `prefix`, by beam search (the
        model alone: each one's score is its log-probability)."""
        model = runtime.model
        found = await self._lm_beam(runtime, state, logits, params.suggestions, params.max_tokens)
        start = len(model.tokenizer.decode(prefix))
        return tuple(
            Suggestion(model.tokenizer.decode([*prefix, *h.tokens])[start:], h.logprob, h.logprob)
            for h in found
        )

    async def _lm_beam(
        self,
        runtime: Runtime,
        state: Arrays,
        logits: np.ndarray,
        width: int,
        max_len: int,
        is_stale: Callable[[], bool] = lambda: False,
    ) -> list[Hypothesis]:
        """Beam search of `width` over the language model from `state` (one slot) and the next
        logits `logits: (V,)`."""
        beam = BeamSearch(width, runtime.model.eos_id, max_len)
        with runtime.lease(width) as slots:
            runtime.pool.write(slots[:1], state)
            search = Search(beam, slots, logits[None], is_stale=is_stale)
            return await runtime.decoder.search(search)  # on the decode loop, with the others


def _attention(step: Arrays, wanted: bool) -> np.ndarray | tuple[()]:
    """The attention row `(S,)` of a one-row `decoder_step` output, when the request wants
    it."""
    return step["attention"][0].copy() if wanted else ()


def _token(event: Event) -> bool:
    return not isinstance(event, Finished)
