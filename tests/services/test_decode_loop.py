"""The decode loop with translation rows: every stream's own encoder memory, padded per batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.engine import Engine
from services.events import Finished, TokenEvent
from services.model import Arrays, ModelRegistry
from services.requests import TranslateParams
from services.runtime import EngineConfig

# Sources of different lengths, so that a batch pads most of them.
SOURCES = ["a dog", "the small dog sees a red car", "her white cow", "a cat runs to the big house"]


@pytest.fixture(scope="module")
def registry(speaking_models: Path) -> ModelRegistry:
    """conftest's bundles with an untrained translator, which writes tokens until `max_tokens`
    (the tiny trained one ends every translation at once)."""
    return ModelRegistry.load(speaking_models)


async def translate_all(engine: Engine) -> list[list[Any]]:
    model = engine.registry.resolve("", "translation")
    params = TranslateParams(max_tokens=8, beam_size=1, include_attention=True)

    async def one(text: str) -> list[Any]:
        events: list[Any] = []
        async for batch in engine.translate(model, text, params, arrived=0.0):
            events += batch
        return events

    return await asyncio.gather(*(one(s) for s in SOURCES))


def test_batched_translation_rows_keep_their_own_source(registry: ModelRegistry) -> None:
    model = registry.resolve("", "translation")
    steps: list[tuple[int, int, int]] = []  # rows, padded source length, padded positions
    run = model.run

    def spy(role: str, feeds: Arrays) -> Arrays:
        if role == "decoder_step":
            mask = feeds["src_mask"]
            steps.append((len(mask), mask.shape[1], int((~mask).sum())))
        return run(role, feeds)

    model.run = spy  # type: ignore[method-assign]
    try:
        batched = asyncio.run(translate_all(Engine(registry, EngineConfig(max_batch_size=64))))
        alone = asyncio.run(translate_all(Engine(registry, EngineConfig(max_batch_size=1))))
    finally:
        del model.run

    assert any(rows > 1 and padded > 0 for rows, _, padded in steps), "padded rows shared calls"
    for text, together, one_by_one in zip(SOURCES, batched, alone, strict=True):
        tokens = [e for e in together if isinstance(e, TokenEvent)]
        final = together[-1]
        assert isinstance(final, Finished) and tokens, text
        assert [e.id for e in tokens] == [e.id for e in one_by_one if isinstance(e, TokenEvent)]
        for event, single in zip(tokens, one_by_one, strict=False):
            assert len(event.attention) == len(final.source_tokens), "padding trimmed"
            assert sum(event.attention) == pytest.approx(1.0, abs=1e-4), "padding got no weight"
            assert isinstance(single, TokenEvent)
            np.testing.assert_allclose(event.attention, single.attention, atol=1e-5)


async def beam_translate_all(engine: Engine) -> list[list[int]]:
    model = engine.registry.resolve("", "translation")
    params = TranslateParams(max_tokens=8, beam_size=3, length_penalty=1.0)

    async def one(text: str) -> list[int]:
        events: list[Any] = []
        async for batch in engine.translate(model, text, params, arrived=0.0):
            events += batch
        assert isinstance(events[-1], Finished)
        return [e.id for e in events if isinstance(e, TokenEvent)]

    found = await asyncio.gather(*(one(s) for s in SOURCES))
    assert engine.runtime(model).pool.used == 0, "every search gave its slots back"
    return found


def test_beam_searches_share_the_decode_loop_and_match_one_at_a_time(
    registry: ModelRegistry,
) -> None:
    """Four concurrent beam searches step together (one call carries several searches' beams,
    each with its own source) and find what each finds alone."""
    model = registry.resolve("", "translation")
    rows: list[int] = []
    run = model.run

    def spy(role: str, feeds: Arrays) -> Arrays:
        if role == "decoder_step":
            rows.append(len(feeds["prev"]))
        return run(role, feeds)

    model.run = spy  # type: ignore[method-assign]
    try:
        batched = asyncio.run(beam_translate_all(Engine(registry, EngineConfig())))
        assert max(rows) > 3, "beams of several searches shared a call"
        rows.clear()
        alone = asyncio.run(beam_translate_all(Engine(registry, EngineConfig(max_batch_size=1))))
        assert max(rows) <= 3, "batching off: a call per search"
    finally:
        del model.run

    for text, together, one_by_one in zip(SOURCES, batched, alone, strict=True):
        assert together, f"{text!r}: the search produced tokens"
        assert together == one_by_one, text
