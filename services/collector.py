"""Between the engine and the transport: a stream's events, handed over in bulk.

A stream's decoding runs as a task of its own that puts each event into the stream's
`Collector` without waiting for anybody (vLLM V1's per-request output collector). The transport
drains the collector whenever it is ready to write and sends everything that accumulated while
its previous write was in flight as one message, so a client that cannot keep up costs one gRPC
message per write, not one per token, and the engine never waits for the network. The first
event of a stream is handed over alone and at once (time to first token); later, a stream may ask
for at least `interval` events per message.

A collector may be bounded (`limit`): a producer that checks `full()` waits (`room()`) while that
many events wait to be written. Token streams are bounded by their `max_tokens` anyway; an
autocomplete session answers messages for as long as the client sends them, so it waits for room
before each answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

from services import scope

T = TypeVar("T")


class Collector(Generic[T]):
    """Events a producer appended and the consumer has not taken yet.

    `counts(event)` is false for an event that ends an answer (a final event): the consumer
    takes everything up to it at once, however few events it waited for.
    """

    def __init__(self, limit: int = 0, counts: Callable[[T], bool] = lambda _: True) -> None:
        self.limit = limit  # 0: unbounded
        self.counts = counts
        self.items: list[T] = []
        self.closed = False
        self.error: BaseException | None = None
        self._wanted = 1  # the events the consumer waits for (woken only then: not per event)
        self._ends = False  # an event that ends an answer is among `items`
        self._ready = asyncio.Event()  # what the consumer waits for arrived, or the producer ended
        self._room = asyncio.Event()  # the consumer took items

    def put(self, item: T) -> None:
        self.items.append(item)
        if not self.counts(item):
            self._ends = True
        if self._ends or len(self.items) >= self._wanted:
            self._ready.set()

    def full(self) -> bool:
        return 0 < self.limit <= len(self.items)

    async def room(self) -> None:
        """Wait until the consumer has taken items (a bounded collector's back-pressure)."""
        while self.full():
            self._room.clear()
            await self._room.wait()

    def close(self, error: BaseException | None = None) -> None:
        self.closed = True
        self.error = error
        self._ready.set()

    async def take(self, at_least: int = 1, at_most: int = 0) -> list[T]:
        """At least `at_least` events (fewer once an event that ends an answer is there, or the
        producer has ended), at most `at_most` (0: all there are); [] when the producer ended
        and everything was taken.

        Raises:
            The producer's exception, once the events before it were taken.
        """
        self._wanted = max(min(at_least, self.limit or at_least), 1)  # no more than fit in it
        while len(self.items) < self._wanted and not self._ends and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        count = len(self.items) if at_most <= 0 else min(at_most, len(self.items))
        taken, self.items = self.items[:count], self.items[count:]
        self._ends = not all(map(self.counts, self.items)) if self.items else False
        self._room.set()
        if not taken and self.error is not None:
            raise self.error
        return taken


async def collect(
    stream: Callable[[Collector[T]], Awaitable[None]],
    *,
    interval: int = 1,
    limit: int = 0,
    counts: Callable[[T], bool] = lambda _: True,
) -> AsyncGenerator[list[T], None]:
    """Run `stream(collector)` in a task of its own; yield what it put, one list per message.

    The first list holds the first event alone; every later one holds everything produced
    since the previous list was taken, and at least `interval` events for which `counts` is true
    (token events), unless it holds an event that ends an answer (one for which `counts` is
    false) or the stream ended. The consumer is woken when such a list is there, not at every
    event. The task is cancelled when this generator is closed, and with its call (`scope`) even
    if nobody closes it.
    """
    collector: Collector[T] = Collector(limit, counts)

    async def produce() -> None:
        try:
            await stream(collector)
        except Exception as error:
            collector.close(error)
        else:
            collector.close()

    task = asyncio.create_task(produce())
    scope.adopt(task)
    try:
        first = await collector.take(1, 1)
        if first:
            yield first
        while batch := await collector.take(interval):
            yield batch
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the consumer itself was cancelled: not the producer's ending to absorb
