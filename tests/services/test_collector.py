"""The collector between a stream's producer and its writer: what one message holds, and when
the writer is woken."""

from __future__ import annotations

import asyncio

from services.collector import Collector, collect

END = "end"  # an event that ends an answer: it does not count toward an interval


def _counts(event: str) -> bool:
    return event != END


async def _turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_a_writer_waiting_for_an_interval_is_woken_when_it_is_there_or_an_answer_ends() -> None:
    async def go() -> list[list[str]]:
        collector: Collector[str] = Collector(counts=_counts)
        taken: list[list[str]] = []

        async def writer() -> None:
            while batch := await collector.take(3):
                taken.append(batch)

        task = asyncio.create_task(writer())
        wakes = []
        for event in ["a", "b", "c", "d", END, "e"]:
            collector.put(event)
            await _turns()
            wakes.append(len(taken))
        collector.close()
        await task
        assert wakes == [0, 0, 1, 1, 2, 2], "woken at the third event and at the answer's end"
        return taken

    assert asyncio.run(go()) == [["a", "b", "c"], ["d", END], ["e"]]


def test_messages_hold_the_first_event_alone_then_at_least_the_interval() -> None:
    async def go() -> list[list[str]]:
        async def stream(out: Collector[str]) -> None:
            for event in ["t0", "t1", "t2", "t3", "t4", "t5", "t6", END, "u0", "u1"]:
                out.put(event)
                await asyncio.sleep(0)

        return [batch async for batch in collect(stream, interval=3, counts=_counts)]

    batches = asyncio.run(go())
    assert batches[0] == ["t0"]
    assert [e for batch in batches for e in batch] == [
        "t0", "t1", "t2", "t3", "t4", "t5", "t6", END, "u0", "u1"
    ]  # fmt: skip
    for batch in batches[1:-1]:  # the last one holds what was left when the stream ended
        tokens = [e for e in batch if e != END]
        assert len(tokens) >= 3 or batch[-1] == END, batches


def test_a_bounded_collector_wakes_its_writer_before_its_producer_would_wait() -> None:
    """A writer that asks for more events than the collector holds is woken once it is full, so
    a producer waiting for room never waits for a writer that waits for it."""

    async def go() -> list[int]:
        collector: Collector[str] = Collector(limit=2, counts=_counts)
        sizes: list[int] = []

        async def writer() -> None:
            while batch := await collector.take(5):
                sizes.append(len(batch))

        async def producer() -> None:
            for event in "abcdef":
                await collector.room()
                collector.put(event)
            collector.close()

        await asyncio.wait_for(asyncio.gather(writer(), producer()), timeout=5)
        return sizes

    assert sum(asyncio.run(go())) == 6
