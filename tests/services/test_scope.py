"""A call's scope: the tasks it adopted are cancelled when the call ends."""

from __future__ import annotations

import asyncio

from services import scope
from services.collector import Collector, collect


def test_an_abandoned_stream_task_is_cancelled_with_its_call() -> None:
    closed: list[str] = []

    async def stream(out: Collector[str]) -> None:
        try:
            while True:
                out.put("event")
                await out.room()
        finally:
            closed.append("stream closed")

    async def call() -> tuple[int, int]:
        tasks = scope.open_scope()
        events = collect(stream, limit=2)
        assert await anext(events) == ["event"]  # then the client goes away: nobody closes it
        adopted = len(tasks)
        scope.cancel(tasks)  # what the interceptor's done callback does
        await asyncio.sleep(0.01)
        return adopted, len(tasks)

    adopted, left = asyncio.run(asyncio.wait_for(call(), 5))
    assert (adopted, left) == (1, 0)
    assert closed == ["stream closed"]


def test_outside_a_call_nothing_is_adopted() -> None:
    """A task adopted where no call's scope is open belongs to no call, not even to one whose
    scope is open at the same moment in another task: that call's end leaves it running."""

    async def a_call(opened: asyncio.Event, ending: asyncio.Event) -> int:
        tasks = scope.open_scope()
        opened.set()
        await ending.wait()
        scope.cancel(tasks)
        return len(tasks)

    async def go() -> tuple[int, str]:
        opened, ending = asyncio.Event(), asyncio.Event()
        call = asyncio.create_task(a_call(opened, ending))
        await opened.wait()
        task = asyncio.create_task(asyncio.sleep(0.01, result="finished"))
        scope.adopt(task)  # no scope open in this context: a no-op
        ending.set()
        return await call, await task

    assert asyncio.run(go()) == (0, "finished")
