"""Autocomplete sessions: completions for text that is still being typed.

The session keeps the language model's state after every token of the current text (a stack of
snapshots). When the text changes, it keeps the snapshots of the longest common token prefix,
restores the last of them into its slot and steps only the new tokens, so typing one more
character costs one model step however long the text is. A newer message abandons the
suggestion being generated for older text (FINISH_REASON_SUPERSEDED). Each answer is what
`Complete` would give for the text (`Engine.answer`: suggestions asked for of a model with a
popular-query index are ranked, from the stored state, and the best one streamed). A session
that neither side has moved for `ttl` seconds (no client message, no answer finished) is expired
by an `IdleTimer`, whatever its handler is doing (see `interceptors.expire`).
At most `BACKLOG` messages wait to be answered: beyond them the server stops reading the
client (HTTP/2 flow control then holds the writer back), so a client that writes and never
reads cannot make the server buffer without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from services.collector import Collector, collect
from services.engine import Engine
from services.errors import InvalidArgument
from services.events import Event, Finished, FinishReason
from services.model import Arrays, LoadedModel
from services.requests import CompleteParams
from services.runtime import Runtime
from services.slots import SlotPool
from services.timing import Clock

BACKLOG = 32  # client messages read ahead of the one being answered
PENDING = 64  # events of answers waiting to be written before the session pauses


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
    """The model state after every token of the text typed so far; the live state in `slots`."""

    def __init__(self, runtime: Runtime, slots: np.ndarray) -> None:
        self.runtime = runtime
        self.slots = slots
        self.ids: list[int] = []
        self.snapshots: list[Arrays] = []  # snapshots[i]: state after ids[: i + 1]
        self.logits: list[np.ndarray] = []  # logits[i]: next-token logits after ids[: i + 1]
        self.moved = False  # the slot advanced past the text (a suggestion was generated)

    async def advance_to(self, text: str) -> int:
        """Move to `text`; returns how many tokens had to be stepped."""
        model = self.runtime.model
        ids = [model.bos_id, *model.tokenizer.encode(text).ids]
        keep = 0
        while keep < min(len(ids), len(self.ids)) and ids[keep] == self.ids[keep]:
            keep += 1
        if keep < len(self.ids) or self.moved:
            restored = self.snapshots[keep - 1] if keep else dict.fromkeys(self.pool.arrays, 0.0)
            self.pool.write(self.slots, restored)
            self.moved = False
        del self.ids[keep:], self.snapshots[keep:], self.logits[keep:]
        for token in ids[keep:]:
            feeds = {"tokens": np.array([[token]], dtype=np.int64)}
            out = await self.runtime.step("lm_step", self.slots, feeds)
            self.ids.append(token)
            self.snapshots.append(self.pool.read(self.slots))
            self.logits.append(out["logits"][0, -1].copy())  # not a view: frees the batch output
        return len(ids) - keep

    @property
    def pool(self) -> SlotPool:
        return self.runtime.pool


async def run_session(
    engine: Engine,
    model: LoadedModel,
    inputs: AsyncIterator[SessionInput],
    *,
    params: CompleteParams,
    max_chars: int,
    interval: int = 1,
) -> AsyncGenerator[list[tuple[int, Event]], None]:
    """Answer every client message with a suggestion: `(revision, event)` pairs, revision from 1,
    handed over in messages (see `collector`).

    Messages are read concurrently with generation; when one arrives, the suggestion in progress
    ends as superseded, and messages that queued up meanwhile are answered with an immediate
    superseded final before the latest one is served. At most `PENDING` events wait to be
    written: beyond them the session stops stepping (and so, soon, reading).
    """
    answers = functools.partial(_session, engine, model, inputs, params, max_chars)
    async with contextlib.aclosing(
        collect(answers, interval=interval, limit=PENDING, counts=_is_token)
    ) as batches:
        async for batch in batches:
            yield batch


def _is_token(answer: tuple[int, Event]) -> bool:
    return not isinstance(answer[1], Finished)


async def _session(
    engine: Engine,
    model: LoadedModel,
    inputs: AsyncIterator[SessionInput],
    params: CompleteParams,
    max_chars: int,
    out: Collector[tuple[int, Event]],
) -> None:
    queue: asyncio.Queue[SessionInput | BaseException | None] = asyncio.Queue(BACKLOG)
    received = 0  # client messages read so far

    async def read() -> None:
        nonlocal received
        try:
            async for item in inputs:
                received += 1
                await queue.put(item)
        except Exception as e:  # surfaced to the caller below
            await queue.put(e)
        await queue.put(None)

    reader = asyncio.create_task(read())
    runtime = engine.runtime(model)
    text, revision = "", 0
    try:
        with runtime.lease() as slots:
            typed = TypedText(runtime, slots)
            while (item := await _next(queue)) is not None:
                revision += 1
                text = item.edit.apply(text) if item.edit is not None else item.text or ""
                if len(text) > max_chars:
                    raise InvalidArgument(
                        "text", f"must be at most {max_chars} characters, got {len(text)}"
                    )
                clock = Clock(item.arrived or time.perf_counter())
                if received > revision:
                    out.put((revision, _superseded(clock, model)))
                    continue
                await out.room()  # the client reads what is waiting before more is generated
                clock.start()
                await typed.advance_to(text)
                typed.moved = True

                def stale(seen: int = revision) -> bool:
                    return received > seen

                def emit(event: Event, seen: int = revision) -> None:
                    out.put((seen, event))

                final = await engine.answer(
                    runtime,
                    slots,
                    typed.logits[-1],
                    text=text,
                    prefix=list(typed.ids),
                    params=params,
                    clock=clock,
                    emit=emit,
                    is_stale=stale,
                )
                out.put((revision, final))
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _next(queue: asyncio.Queue[SessionInput | BaseException | None]) -> SessionInput | None:
    # A plain `get`: Python 3.11's `asyncio.wait_for` returns the item instead of raising when
    # the task is cancelled just as the item arrives, which kept cancelled sessions alive.
    item = await queue.get()
    if isinstance(item, BaseException):
        raise item
    return item


class IdleTimer:
    """Calls `expire` once `touch` has not been called for `ttl` seconds."""

    def __init__(self, ttl: float, expire: Callable[[], None]) -> None:
        self.ttl = ttl
        self.expire = expire
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self.touch()

    def touch(self) -> None:
        self.cancel()
        self._handle = self._loop.call_later(self.ttl, self.expire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def _superseded(clock: Clock, model: LoadedModel) -> Event:
    return clock.finish(
        model, reason=FinishReason.SUPERSEDED, text="", input_tokens=0, output_tokens=0
    )
