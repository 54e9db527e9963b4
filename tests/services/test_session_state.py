"""The session's state stack: an edit costs steps for the changed tokens only, and the state it
restores is exactly the state of reading the new text from scratch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.engine import Engine
from services.events import Finished
from services.model import ModelRegistry
from services.requests import CompleteParams
from services.session import Edit, SessionInput, TypedText, run_session


@pytest.mark.parametrize(
    ("texts", "steps", "reason"),
    [
        (["weather", "weather "], [8, 1], "one more character: one step"),
        (["weather in", "weather"], [11, 0], "deleting restores a snapshot: no step"),
        (["weather in", "weatxer in"], [11, 6], "a change in the middle re-reads from there"),
        (["weather", "", "how"], [8, 0, 3], "clearing the text goes back to the start"),
    ],
)
def test_edits_cost_only_the_changed_tokens(
    tiny_models: Path, texts: list[str], steps: list[int], reason: str
) -> None:
    engine = Engine(ModelRegistry.load(tiny_models))
    model = engine.registry.resolve("", "autocomplete")
    runtime = engine.runtime(model)

    async def go() -> tuple[list[int], np.ndarray, np.ndarray]:
        with runtime.lease() as slots, runtime.lease() as fresh:
            typed = TypedText(runtime, slots)
            taken = []
            for text in texts:
                taken.append(await typed.advance_to(text))
                typed.moved = True  # as after a suggestion: the slot is past the text
            scratch = TypedText(runtime, fresh)
            await scratch.advance_to(texts[-1])
            return taken, typed.logits[-1], scratch.logits[-1]

    taken, logits, expected = asyncio.run(go())
    assert taken == steps, reason
    np.testing.assert_allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("edit", "text", "expected", "reason"),
    [
        (Edit(3, 3, "X"), "abcdef", "abcXdef", "insert"),
        (Edit(0, 6, ""), "abcdef", "", "delete everything"),
        (Edit(1, 3, "ZZZ"), "abcdef", "aZZZdef", "replace"),
    ],
)
def test_edit_apply(edit: Edit, text: str, expected: str, reason: str) -> None:
    assert edit.apply(text) == expected, reason


@pytest.mark.parametrize(
    ("edit", "field", "reason"),
    [
        (Edit(0, 7, ""), "edit.end", "past the end"),
        (Edit(4, 2, ""), "edit.start", "start after end"),
    ],
)
def test_bad_edits_name_the_field(edit: Edit, field: str, reason: str) -> None:
    from services.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as info:
        edit.apply("abcdef")
    assert info.value.field == field, reason


def test_a_session_cancelled_as_a_message_arrives_gives_its_slot_back(tiny_models: Path) -> None:
    """The cancel and the next message land in the same event-loop turn, the interleaving in
    which Python 3.11's `asyncio.wait_for` returned the message and dropped the cancel: the
    session then went on answering into a queue nobody read, holding its slot forever."""
    engine = Engine(ModelRegistry.load(tiny_models))
    model = engine.registry.resolve("", "autocomplete")
    runtime = engine.runtime(model)
    params = CompleteParams(max_tokens=4)

    async def go() -> list[int]:
        held = []  # slots in use after each session closed
        for turn in range(30):
            messages: asyncio.Queue[SessionInput] = asyncio.Queue()

            async def inputs(queue: asyncio.Queue[SessionInput] = messages) -> Any:
                while True:
                    yield await queue.get()

            answers = run_session(engine, model, inputs(), params=params, max_chars=100)
            messages.put_nowait(SessionInput(text="how"))
            async for batch in answers:  # the first answer: then it waits for the next message
                if any(isinstance(event, Finished) for _, event in batch):
                    break
            messages.put_nowait(SessionInput(text="how t"))
            for _ in range(turn % 6):  # the message travels a few turns towards the session
                await asyncio.sleep(0)
            closing = asyncio.create_task(answers.aclose())
            await asyncio.wait({closing}, timeout=5)  # the leak: a close that never ends
            for _ in range(100):  # a step already running frees its slot when it lands
                if runtime.pool.used == 0 or not closing.done():
                    break
                await asyncio.sleep(0.01)
            held.append(runtime.pool.used)
            closing.cancel()
        return held

    assert asyncio.run(go()) == [0] * 30
