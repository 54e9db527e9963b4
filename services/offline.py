"""Requests run through an in-process serving engine, many at a time, without gRPC or a server.

`recur-eval` and the export's fits measure a bundle with this, so what they measure is what
`recur-serve` streams: the same bundle loader (`LoadedModel`), the same scheduler batching the
steps of every live stream, the same greedy, beam search, pooling and detokenizer (`Engine`).
Requests run `streams` at a time, so the scheduler has many streams' steps to batch, as it has
under load.

Each call of `Offline` (`translate`, `analyze`, `complete`, ...) starts an engine on a fresh
event loop and closes it when every request has ended: the engine's runtimes belong to the loop
they were made on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import numpy as np

from protos.recur.v1 import bundle_pb2
from services.bundle import assembling, verify
from services.decoder import Search
from services.decoding import BeamSearch, Hypothesis, log_softmax
from services.engine import Engine
from services.errors import BundleError
from services.events import Event, Finished, RunningLabel, TokenEvent
from services.model import LoadedModel, ModelRegistry
from services.requests import CompleteParams, TranslateParams
from services.runtime import EngineConfig

STREAMS = 64  # requests in flight at once
T = TypeVar("T")
Progress = Callable[[int, int], None]  # (requests done, requests in all)
Call = Callable[[Engine], AsyncIterator[list[Event]]]
Job = Callable[[Engine], Awaitable[T]]


GRAPHS = ("fp32", "optimized", "int8")  # the copies of a bundle's graphs, as exported


def open_model(
    path: Path, *, graphs: str = "fp32", staged: bundle_pb2.BundleManifest | None = None
) -> LoadedModel:
    """The model of the bundle at `path`, loaded as `recur-serve` loads it, running the
    `graphs` copy of its graphs (not the server's fallback: a bundle without that copy is
    refused).

    Args:
        path: a bundle version directory.
        graphs: "fp32" (the exported graphs), "optimized" or "int8".
        staged: the manifest of a bundle still being assembled in `path` (the export measures
            it before it writes the manifest); its files are taken as they are now.

    Raises:
        BundleError: the bundle fails verification, does not load, or has no such copy.
    """
    if graphs not in GRAPHS:
        raise ValueError(f"unknown graphs {graphs!r}; expected one of {GRAPHS}")
    bundle = verify(path) if staged is None else assembling(path, staged)
    files = {"fp32": "file", "optimized": "optimized_file", "int8": "quantized_file"}[graphs]
    for spec in bundle.manifest.graphs:
        if not getattr(spec, files):
            raise BundleError(f"{path}: graph {spec.role!r} has no {graphs} copy")
    return LoadedModel(bundle, graphs=graphs)


@dataclass(frozen=True)
class Outcome:
    """What one request streamed: its token (or running-label) events, then its final event
    (None when the caller stopped reading before the end)."""

    events: tuple[TokenEvent | RunningLabel, ...]
    final: Finished | None


class Offline:
    """An engine over one model that runs batches of requests to the end.

    Args:
        model: the loaded model every request goes to.
        streams: requests in flight at once.
        workers: ONNX Runtime calls in flight at once (the engine's executor threads).
        progress: called after every finished request with (done, total).
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        streams: int = STREAMS,
        workers: int = 2,
        progress: Progress | None = None,
    ) -> None:
        self.model = model
        self.streams = max(streams, 1)
        self.workers = workers
        self.progress = progress

    def translate(
        self, texts: Sequence[str], params: TranslateParams | Sequence[TranslateParams]
    ) -> list[Outcome]:
        """`Engine.translate` of every text (one `params` for all, or one per text)."""
        each = [params] * len(texts) if isinstance(params, TranslateParams) else list(params)

        def call(text: str, p: TranslateParams) -> Call:
            return lambda engine: engine.translate(self.model, text, p, arrived=time.perf_counter())

        beam = max((p.beam_size for p in each), default=1)
        return self._run([call(t, p) for t, p in zip(texts, each, strict=True)], rows=beam)

    def beam_hypotheses(self, texts: Sequence[str], *, size: int) -> list[list[Hypothesis]]:
        """Every hypothesis the served beam search of width `size` ends with, for each text
        (translation, the service's length rule: 2 * source tokens + 10).

        The search runs to its end, as it does under any length penalty above 0, whose choice
        it leaves to the caller: re-ranking these by `score / length_penalty(...)` gives what
        `Engine.translate` streams with that penalty, so a fit over many penalties searches
        once per width. The steps are the engine's own (the decode loop's `Search`, with the
        request set up as `Engine.translate` sets it up).
        """

        def job(text: str) -> Job[list[Hypothesis]]:
            async def search(engine: Engine) -> list[Hypothesis]:
                model, runtime = self.model, engine.runtime(self.model)
                src = np.array([model.tokenizer.encode(text).ids], dtype=np.int64)  # (1, S)
                limit = TranslateParams(max_tokens=0, max_length_ratio=2.0).limit(src.shape[1])
                beam = BeamSearch(size, model.eos_id, limit, alpha=1.0)  # > 0: to the end
                with runtime.lease(size) as slots:
                    encoded = await runtime.step(
                        "encoder", slots[:1], {"src": src, "src_len": np.array([src.shape[1]])}
                    )
                    context = {"memory": encoded["memory"],
                               "src_mask": np.ones((1, src.shape[1]), dtype=bool)}  # fmt: skip
                    bos = np.array([[model.bos_id]], dtype=np.int64)
                    first = await runtime.step("decoder_step", slots[:1], {"prev": bos, **context})
                    await runtime.decoder.search(Search(beam, slots, first["logits"], context))
                return beam.ended or beam.live

            return search

        return self._loop([job(t) for t in texts], rows=size)

    def analyze(self, texts: Sequence[str], *, read: Sequence[int] = ()) -> list[Outcome]:
        """`Engine.analyze` of every text; with `read`, a text's stream is closed once that many
        running labels arrived (what a client that stops reading there saw)."""

        def call(text: str) -> Call:
            return lambda engine: engine.analyze(self.model, text, arrived=time.perf_counter())

        return self._run([call(t) for t in texts], until=list(read) or None)

    def complete(self, texts: Sequence[str], params: CompleteParams) -> list[Outcome]:
        """`Engine.complete` of every prefix with the same `params`."""

        def call(text: str) -> Call:
            return lambda engine: engine.complete(
                self.model, text, params, arrived=time.perf_counter()
            )

        width = params.suggestions
        if width and self.model.popular is not None and not params.model_only:
            width = max(width, self.model.candidates)  # a ranked answer's beam: `Engine.ranked`
        return self._run([call(t) for t in texts], rows=max(width, 1))

    def logprobs(self, sequences: Sequence[Sequence[int]], *, start: Sequence[int]) -> list[float]:
        """The log-probability of `seq[start[i]:]` after `seq[:start[i]]` for each of a language
        model's `sequences` (ids from `[BOS]` on, `start[i] >= 1`): the served prompt reading
        (`Runtime.prefill`) of the sequence, its logits scored against the next ids (teacher
        forcing)."""

        def job(ids: Sequence[int], first: int) -> Job[float]:
            async def score(engine: Engine) -> float:
                runtime = engine.runtime(self.model)
                with runtime.lease() as slots:
                    chunks = await runtime.prefill("lm_step", slots, list(ids[:-1]))
                logp = log_softmax(np.concatenate(chunks).astype(np.float64))  # (T - 1, V)
                positions = np.arange(first - 1, len(ids) - 1)
                return float(logp[positions, np.asarray(ids)[positions + 1]].sum())

            return score

        return self._loop([job(ids, first) for ids, first in zip(sequences, start, strict=True)])

    def _run(
        self, calls: list[Call], *, rows: int = 1, until: list[int] | None = None
    ) -> list[Outcome]:
        """Every call's events, reading each stream to its final event (or to `until[i]`
        events, then closing it as a client that hangs up does)."""

        def job(call: Call, stop: int) -> Job[Outcome]:
            async def read(engine: Engine) -> Outcome:
                events: list[TokenEvent | RunningLabel] = []
                batches = cast(AsyncGenerator[list[Event], None], call(engine))  # collect()'s
                async with aclosing(batches) as stream:
                    async for batch in stream:
                        for event in batch:
                            if isinstance(event, Finished):
                                return Outcome(tuple(events), event)
                            events.append(event)
                            if len(events) == stop:
                                return Outcome(tuple(events), None)
                raise RuntimeError("a stream ended without its final event")

            return read

        stops = until or [0] * len(calls)
        return self._loop([job(c, s) for c, s in zip(calls, stops, strict=True)], rows=rows)

    def _loop(self, jobs: list[Job[T]], *, rows: int = 1) -> list[T]:
        """Run `jobs` on one engine, `streams` at a time, in order of the list; their results
        in the same order. `rows`: state slots one job holds at most (a beam's width)."""
        cfg = EngineConfig(
            max_batch_size=max(256, self.streams * rows),
            state_slots=self.streams * (rows + 1),  # a completion holds its own and its beams
            executor_workers=self.workers,
        )

        async def main() -> list[T]:
            engine = Engine(ModelRegistry({(self.model.name, self.model.version): self.model}),
                            cfg)  # fmt: skip
            results: list[T | None] = [None] * len(jobs)
            queue = iter(range(len(jobs)))
            done = 0

            async def worker() -> None:
                nonlocal done
                for i in queue:  # shared: each index is taken by one worker
                    results[i] = await jobs[i](engine)
                    done += 1
                    if self.progress is not None:
                        self.progress(done, len(jobs))

            try:
                await asyncio.gather(*(worker() for _ in range(min(self.streams, len(jobs)))))
            finally:
                engine.close()
            return results  # type: ignore[return-value]  # every index was filled

        return asyncio.run(main())
