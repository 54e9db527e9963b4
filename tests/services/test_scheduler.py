"""Continuous batching: what runs together, in what order, and that batching changes no result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services import scheduler as scheduler_module
from services import suggestions
from services.decoding import SamplingParams
from services.engine import Engine
from services.errors import ResourceExhausted
from services.events import Finished, RunningLabel, TokenEvent
from services.model import Arrays, ModelRegistry
from services.requests import CompleteParams, TranslateParams
from services.runtime import EngineConfig

PREFIXES = ["h", "how to", "weather in new", "best pizza near me open", "c", "flights to"]
SOURCES = ["a dog", "the small dog sees a red car", "her white cow sends a pilot", "a cat runs"]
REVIEWS = ["not good", "a truly wonderful film , i loved it", "bad", "dull but well acted"]


@pytest.fixture(scope="module")
def registry(speaking_models: Path) -> ModelRegistry:
    """The tiny bundles with a translator that writes tokens (conftest's `speaking_models`)."""
    return ModelRegistry.load(speaking_models)


def make_engine(registry: ModelRegistry, max_batch_size: int) -> tuple[Engine, list[int]]:
    """An engine whose batch sizes are recorded."""
    rows: list[int] = []
    engine = Engine(
        registry,
        EngineConfig(max_batch_size=max_batch_size, state_slots=64, prefill_chunk=4),
        observe=lambda scheduler, role, n, seconds: rows.append(n),
    )
    return engine, rows


async def everything(engine: Engine) -> list[list[Any]]:
    """Every kind of stream at once, as concurrent clients would send them. Completions decode
    with the model alone (`model_only`): the index's ranking is tested in test_suggestions."""
    lm = engine.registry.resolve("", "autocomplete")
    mt = engine.registry.resolve("", "translation")
    clf = engine.registry.resolve("", "sentiment")
    streams = [
        *(engine.complete(lm, p, CompleteParams(max_tokens=4 + i, model_only=True), arrived=0.0)
          for i, p in enumerate(PREFIXES)),
        engine.complete(lm, "how", CompleteParams(max_tokens=5, suggestions=3,
                                                      model_only=True), arrived=0.0),
        engine.complete(lm, "how", CompleteParams(max_tokens=8, sampling=SamplingParams(
            temperature=0.8, top_k=5, seed=42), model_only=True), arrived=0.0),
        *(engine.translate(mt, s, TranslateParams(max_tokens=12), arrived=0.0) for s in SOURCES),
        engine.translate(mt, SOURCES[1], TranslateParams(beam_size=3), arrived=0.0),
        *(engine.analyze(clf, r, arrived=0.0) for r in REVIEWS),
    ]  # fmt: skip

    async def collect(stream: Any) -> list[Any]:
        return [event async for batch in stream for event in batch]

    return await asyncio.gather(*(collect(s) for s in streams))


# Where `everything`'s translations are among its streams: the greedy ones, then the beam search.
TRANSLATIONS = slice(len(PREFIXES) + 2, len(PREFIXES) + 3 + len(SOURCES))


def translated_tokens(results: list[list[Any]]) -> list[int]:
    """How many tokens each of `everything`'s translations wrote."""
    return [sum(isinstance(e, TokenEvent) for e in s) for s in results[TRANSLATIONS]]


def signature(events: list[Any]) -> list[Any]:
    out: list[Any] = []
    for e in events:
        if isinstance(e, TokenEvent):
            out.append(e.id)
        elif isinstance(e, RunningLabel):
            out.append(tuple(round(p, 5) for p in e.probabilities))
        elif isinstance(e, Finished):
            out.append((e.reason, e.text, [(s.text, round(s.logprob, 4)) for s in e.suggestions]))
    return out


def test_batched_results_equal_unbatched_token_for_token(registry: ModelRegistry) -> None:
    batched, batched_rows = make_engine(registry, max_batch_size=64)
    alone, alone_rows = make_engine(registry, max_batch_size=1)
    together = asyncio.run(everything(batched))
    one_by_one = asyncio.run(everything(alone))
    assert all(translated_tokens(together)), "every translation has tokens to compare"
    assert [signature(s) for s in together] == [signature(s) for s in one_by_one]
    assert max(batched_rows) > 4, "concurrent streams shared calls"
    assert len(batched_rows) < len(alone_rows) / 2
    assert max(alone_rows) == 3, "with batching off a call holds one stream (its beams)"
    for engine in (batched, alone):
        assert all(rt.pool.used == 0 and rt.streams == 0 for rt in engine._runtimes.values())


async def recorded_batches(
    engine: Engine, requests: list[tuple[str, int]]
) -> tuple[list[tuple[int, ...]], list[str]]:
    """Queue steps (label, tokens per row) in one event-loop turn; the calls and finish order."""
    model = engine.registry.resolve("", "autocomplete")
    runtime = engine.runtime(model)
    calls: list[tuple[int, ...]] = []
    run = model.run

    def spy(role: str, feeds: Arrays) -> Arrays:
        calls.append(feeds["tokens"].shape)
        return run(role, feeds)

    model.run = spy  # type: ignore[method-assign]
    finished: list[str] = []

    async def one(label: str, length: int) -> None:
        with runtime.lease() as slots:
            await runtime.step("lm_step", slots, {"tokens": np.full((1, length), 5)})
        finished.append(label)

    try:
        await asyncio.gather(*(one(label, length) for label, length in requests))
    finally:
        del model.run
    return calls, finished


@pytest.mark.parametrize(
    ("max_batch", "expected_calls", "expected_order", "reason"),
    [
        (8, [(3, 1), (1, 4)], ["a", "c", "d", "b"], "decode steps share a call; the chunk waits"),
        (
            2,
            [(2, 1), (1, 4), (1, 1)],
            ["a", "c", "b", "d"],
            "full batch: the older chunk goes next",
        ),
        (1, [(1, 1), (1, 4), (1, 1), (1, 1)], ["a", "b", "c", "d"], "batching off: plain FIFO"),
    ],
)
def test_batch_composition_is_fifo_by_shape(
    registry: ModelRegistry,
    max_batch: int,
    expected_calls: list[tuple[int, int]],
    expected_order: list[str],
    reason: str,
) -> None:
    engine = Engine(registry, EngineConfig(max_batch_size=max_batch, executor_workers=1))
    requests = [("a", 1), ("b", 4), ("c", 1), ("d", 1)]
    calls, finished = asyncio.run(recorded_batches(engine, requests))
    assert calls == expected_calls, reason
    assert finished == expected_order, reason


async def until(condition: Callable[[], bool], what: str, *, within: float = 30.0) -> None:
    """Wait for what a test needs to have happened, instead of a time a loaded machine may not
    honour."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {within:g} s"
        await asyncio.sleep(0.001)


def test_cancelled_streams_give_their_slots_back(registry: ModelRegistry) -> None:
    engine, _ = make_engine(registry, max_batch_size=64)
    lm = engine.registry.resolve("", "autocomplete")

    async def scenario() -> int:
        async def read(stream: Any) -> None:
            async for _ in stream:
                pass

        tasks = [
            asyncio.create_task(read(engine.complete(lm, p, CompleteParams(max_tokens=200,
                                                                    model_only=True),
                                                     arrived=0.0)))
            for p in PREFIXES * 4
        ]  # fmt: skip
        pool = engine.runtime(lm).pool
        await until(lambda: pool.used > len(PREFIXES), "the streams hold their slots")
        in_use = pool.used
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await until(lambda: pool.used == 0, "a batch that was running landed: every slot back")
        return in_use

    in_use = asyncio.run(scenario())
    runtime = engine.runtime(lm)
    assert in_use > len(PREFIXES), "the streams were live when cancelled"
    assert runtime.pool.used == 0
    assert runtime.streams == 0
    assert runtime.scheduler.waiting == 0


def test_optimized_graphs_serve_the_same_tokens(speaking_models: Path) -> None:
    results, files = {}, {}
    for choice in ("fp32", "optimized", "int8"):
        engine = Engine(ModelRegistry.load(speaking_models, graphs=choice))
        streams = asyncio.run(everything(engine))
        assert all(translated_tokens(streams)), "every translation has tokens to compare"
        results[choice] = [signature(s) for s in streams]
        files[choice] = sorted(f for m in engine.registry.models.values() for f in m.files.values())
    assert all(f.endswith(".opt.onnx") for f in files["optimized"])
    assert files["int8"] == files["optimized"], "no int8 copy in these bundles: the optimized one"
    assert not any(f.endswith(".opt.onnx") for f in files["fp32"])
    assert results["optimized"] == results["fp32"]


def test_steps_known_to_be_short_run_on_the_loop_with_the_same_results(
    registry: ModelRegistry,
) -> None:
    """With a generous `inline_step_ms` every graph's first call per size runs in the
    executor (nothing is known yet) and later ones on the loop; with 0 none does. Either way the
    streams get the same tokens."""
    calls: dict[int, int] = {}  # scheduler -> its calls

    def engine(inline: float) -> Engine:
        cfg = EngineConfig(max_batch_size=64, state_slots=64, prefill_chunk=4,
                           inline_step_ms=inline)  # fmt: skip
        return Engine(registry, cfg, observe=lambda scheduler, *_: calls.update(
            {id(scheduler): calls.get(id(scheduler), 0) + 1}))  # fmt: skip

    inline, executor = engine(10_000.0), engine(0.0)
    assert [signature(s) for s in asyncio.run(everything(inline))] == [
        signature(s) for s in asyncio.run(everything(executor))
    ]
    for runtime in inline._runtimes.values():
        scheduler = runtime.scheduler
        # a size's first call, and one more formed while it ran (2 executor threads), at most
        in_executor = calls[id(scheduler)] - scheduler.inline_calls
        assert in_executor <= 2 * len(scheduler._cost), (runtime.model.task, in_executor)
        if runtime.model.task in ("autocomplete", "translation"):  # decode loops: many steps
            assert scheduler.inline_calls > 0, runtime.model.task
    assert all(rt.scheduler.inline_calls == 0 for rt in executor._runtimes.values())


def test_short_steps_run_on_the_loop_one_per_turn(registry: ModelRegistry) -> None:
    """With batching off every stream's step is a batch of its own. Known-short ones run on the
    loop's thread, but one per turn of the loop: running every queued one at once blocked the
    loop for all of them (64 calls at 64 streams), holding back every stream's writes."""
    turn = [0]
    inline_turns: dict[int, list[int]] = {}  # scheduler -> the turn of each call on the loop
    seen: dict[int, int] = {}

    def observe(scheduler: Any, role: str, rows: int, seconds: float) -> None:
        if scheduler.inline_calls > seen.get(id(scheduler), 0):  # this batch ran on the loop
            inline_turns.setdefault(id(scheduler), []).append(turn[0])
        seen[id(scheduler)] = scheduler.inline_calls

    cfg = EngineConfig(max_batch_size=1, state_slots=64, prefill_chunk=4, inline_step_ms=10_000.0)
    engine = Engine(registry, cfg, observe=observe)

    async def go() -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:  # runs once in every turn of the loop
            turn[0] += 1
            loop.call_soon(tick)

        tick()
        await everything(engine)

    asyncio.run(go())
    assert sum(map(len, inline_turns.values())) > 20, inline_turns
    for turns in inline_turns.values():
        assert len(turns) == len(set(turns)), "two calls on the loop in one turn"


@pytest.mark.parametrize("handoff", [0.0, 10.0])
def test_short_steps_run_on_the_loop_only_when_no_other_step_waits(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch, handoff: float
) -> None:
    """While other steps wait, a known-short one goes to the executor, so that ONNX Runtime
    runs beside the loop's Python: run on the loop under load, such steps held back every other
    stream (at 64 completion streams the time to first token went from 20 to 190 ms). Unless it
    is shorter than a hand-off itself: then it runs on the loop however busy (with a hand-off
    of 10 s here, every step but the first of each size does)."""
    monkeypatch.setattr(scheduler_module, "HANDOFF_SECONDS", handoff)
    waiting_at_inline: list[int] = []
    seen: dict[int, int] = {}
    calls = [0]

    def observe(scheduler: Any, role: str, rows: int, seconds: float) -> None:
        calls[0] += 1
        if scheduler.inline_calls > seen.get(id(scheduler), 0):  # this batch ran on the loop
            waiting_at_inline.append(scheduler.waiting)  # as when it was chosen: it ran at once
        seen[id(scheduler)] = scheduler.inline_calls

    cfg = EngineConfig(max_batch_size=1, state_slots=64, prefill_chunk=4, inline_step_ms=10_000.0)
    asyncio.run(everything(Engine(registry, cfg, observe=observe)))
    assert waiting_at_inline, "some steps ran on the loop"
    if handoff:
        assert any(waiting_at_inline), "steps shorter than a hand-off ran with others waiting"
    else:
        assert set(waiting_at_inline) == {0}, waiting_at_inline
        assert len(waiting_at_inline) < calls[0] / 2, "with batching off, most had company"


def test_a_step_s_wait_for_an_executor_thread_is_not_counted_as_its_cost(
    registry: ModelRegistry,
) -> None:
    """A step queued behind a long call waited for the thread, not for the model: timed from
    the loop, that wait made it look long, and every step of its size stayed off the loop."""
    lm = registry.resolve("", "autocomplete")
    cfg = EngineConfig(executor_workers=1, state_slots=4, inline_step_ms=50.0)
    engine = Engine(registry, cfg)
    runtime = engine.runtime(lm)

    async def two_steps() -> None:
        with runtime.lease() as slots:
            feeds = {"tokens": np.array([[lm.bos_id]], dtype=np.int64)}
            engine.executor.submit(time.sleep, 0.3)  # the only thread is busy for 300 ms
            started = time.perf_counter()
            await runtime.step("lm_step", slots, feeds)  # the first of its size: in the executor
            assert time.perf_counter() - started > 0.25, "it waited for the thread"
            await runtime.step("lm_step", slots, feeds)

    asyncio.run(two_steps())
    assert runtime.scheduler.inline_calls == 1, "the second, known to be short, ran on the loop"


def test_a_ranked_answer_without_slots_for_its_beam_and_scoring_is_refused_as_such(
    registry: ModelRegistry,
) -> None:
    """A ranked answer's beam search and its scoring step hold slots at the same time; when the
    pool cannot hold both, the answer fails with ResourceExhausted (RESOURCE_EXHAUSTED on the
    wire, with a retry hint), like any stream that finds no slot, not with an internal error."""
    lm = registry.resolve("", "autocomplete")
    assert lm.popular is not None
    indexed, lent = suggestions.candidates(lm, "new york")
    assert 0 < len(indexed) + len(lent) < 8, "a prefix whose candidates need a beam beside them"
    width = max(8, lm.candidates)
    # the stream's slot and the beam's fit; the scoring step's rows do not
    engine = Engine(registry, EngineConfig(state_slots=1 + width, prefill_chunk=4))
    params = CompleteParams(max_tokens=4, suggestions=8)
    with pytest.raises(ResourceExhausted, match="no free state slot"):
        asyncio.run(_events(engine, lm, params))
    roomy = Engine(registry, EngineConfig(state_slots=1 + width + 7, prefill_chunk=4))
    events = asyncio.run(_events(roomy, lm, params))
    assert isinstance(events[-1], Finished) and len(events[-1].suggestions) == 8


async def _events(engine: Engine, model: Any, params: CompleteParams) -> list[Any]:
    return [event async for batch in engine.complete(model, "new york", params, arrived=0.0)
            for event in batch]  # fmt: skip


def test_a_slot_under_a_queued_step_is_not_handed_out_again(registry: ModelRegistry) -> None:
    """A decode-loop step carries many streams' rows. One that leaves while the step waits in
    the queue gets its slot back only once the step has run: the slot is never handed to a new
    stream whose state the step would then overwrite."""
    engine, _ = make_engine(registry, max_batch_size=64)
    lm = engine.registry.resolve("", "autocomplete")
    runtime = engine.runtime(lm)
    pool = runtime.pool

    async def scenario() -> None:
        slots = pool.acquire(1)
        tokens = np.array([[lm.bos_id]], dtype=np.int64)
        step = asyncio.create_task(runtime.step("lm_step", slots, {"tokens": tokens}))
        await asyncio.sleep(0)  # the step is queued, not yet running
        assert runtime.scheduler.waiting == 1
        pool.release(slots)  # its stream left
        others = pool.acquire(pool.capacity - pool.used)  # every slot the pool gives now
        assert int(slots[0]) not in others.tolist()
        await step
        pool.release(others)
        assert pool.used == 0, "the step ran: its slot is free again"

    asyncio.run(scenario())
