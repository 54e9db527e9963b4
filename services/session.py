"""Autocomplete sessions: completions for text that is still being typed.

The session keeps the language model's state after every token of the current text. When the
text changes, it keeps the states of the longest common token prefix and advances only over the
new tokens, so typing one more character costs one model step however long the text is. A newer
message abandons the suggestion being generated for older text (FINISH_REASON_SUPERSEDED).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from services.engine import Clock, Engine
from services.errors import InvalidArgument
from services.events import Event, FinishReason
from services.model import Arrays, LoadedModel


@dataclass(frozen=True)
class Edit:
    """Replace the characters [start, end) of the current text with `text`."""

    start: int
    end: int
    text: str

    def apply(self, current: str) -> str:
        if self.end > len(current):
            raise InvalidArgument(
                "edit.end", f"must be <= the text length {len(current)}, got {self.end}"
            )
        if self.start > self.end:
            raise InvalidArgument("edit.start", f"must be <= edit.end {self.end}, got {self.start}")
        return current[: self.start] + self.text + current[self.end :]


@dataclass(frozen=True)
class SessionInput:
    """One client message: the full text so far, or an edit of the previous text."""

    text: str | None = None
    edit: Edit | None = None
    arrived: float = 0.0


class TypedText:
    """The model state after every token of the text typed so far."""

    def __init__(self, engine: Engine, model: LoadedModel) -> None:
        self.engine = engine
        self.model = model
        self.ids: list[int] = []
        self.states: list[Arrays] = []  # states[i]: after ids[: i + 1]
        self.logits: list[np.ndarray] = []  # logits[i]: next-token logits after ids[: i + 1]

    async def advance_to(self, text: str) -> int:
        """Move to `text`; returns how many tokens had to be stepped."""
        ids = [self.model.bos_id, *self.model.tokenizer.encode(text).ids]
        keep = 0
        while keep < min(len(ids), len(self.ids)) and ids[keep] == self.ids[keep]:
            keep += 1
        del self.ids[keep:], self.states[keep:], self.logits[keep:]
        for token in ids[keep:]:
            state = self.states[-1] if self.states else self.model.zero_state(1)
            feeds = {"tokens": np.array([[token]], dtype=np.int64), **state}
            out = await self.engine.run(self.model, "lm_step", feeds)
            self.ids.append(token)
            self.states.append(self.model.next_state(out))
            self.logits.append(out["logits"][0, -1])
        return len(ids) - keep


async def run_session(
    engine: Engine,
    model: LoadedModel,
    inputs: AsyncIterator[SessionInput],
    *,
    max_tokens: int,
    max_chars: int,
) -> AsyncIterator[tuple[int, Event]]:
    """Answer every client message with a suggestion: `(revision, event)` pairs, revision from 1.

    Messages are read concurrently with generation; when one arrives, the suggestion in progress
    ends as superseded, and messages that queued up meanwhile are answered with an immediate
    superseded final before the latest one is served.
    """
    queue: asyncio.Queue[SessionInput | None] = asyncio.Queue()
    stale = asyncio.Event()
    failure: list[BaseException] = []

    async def read() -> None:
        try:
            async for item in inputs:
                await queue.put(item)
                stale.set()
        except BaseException as e:  # surfaced to the caller below
            failure.append(e)
        await queue.put(None)

    reader = asyncio.create_task(read())
    typed = TypedText(engine, model)
    text, revision = "", 0
    try:
        while (item := await queue.get()) is not None:
            revision += 1
            text = item.edit.apply(text) if item.edit is not None else item.text or ""
            if len(text) > max_chars:
                raise InvalidArgument(
                    "text", f"must be at most {max_chars} characters, got {len(text)}"
                )
            clock = Clock(item.arrived or time.perf_counter())
            if not queue.empty():
                yield (
                    revision,
                    clock.finish(
                        model,
                        reason=FinishReason.SUPERSEDED,
                        text="",
                        input_tokens=0,
                        output_tokens=0,
                    ),
                )
                continue
            stale.clear()
            clock = Clock(clock.arrived, started=time.perf_counter())
            await typed.advance_to(text)
            async for event in engine.generate(
                model,
                typed.logits[-1],
                typed.states[-1],
                prefix=list(typed.ids),
                max_tokens=max_tokens,
                clock=clock,
                stale=stale,
            ):
                yield revision, event
        if failure:
            raise failure[0]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
