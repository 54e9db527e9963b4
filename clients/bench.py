"""The load generator behind `recur bench`: closed or open loop, in one process or several.

Closed loop (`concurrency`): that many workers each send a request, read its stream to the end and
send the next. Open loop (`rate`): requests start at Poisson arrivals whatever the server does;
their latencies count from the *scheduled* arrival, so a generator or server that falls behind
shows up as latency instead of quietly sending less (`schedule_lag` says how late starts were).

Requests started in the first `warmup` seconds run but are not measured. The measured phase ends
after `duration` seconds or `requests` requests; requests in flight then run to their end. Calls
are never retried: a failure counts under its status code. Each process has its own event loop and
channel and measures its own CPU time over the measured phase, so the report can say whether the
generator itself was the bottleneck.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import math
import multiprocessing
import queue
import random
import time
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import grpc

from clients.bench_report import Samples
from clients.calls import NO_RETRIES, RecurError
from clients.channel import Connection
from clients.sdk import RecurClient

TASKS = ("translation", "sentiment", "autocomplete")
SAMPLE_PAYLOADS = {
    "translation": (
        "the small black dog sees a red car",
        "the cats are happy",
        "the babies sleep",
        "an old woman likes the new cars",
        "the big dogs see a small cat",
        "the car is very red",
    ),
    "sentiment": (
        "the acting was good but the plot was terrible",
        "not bad at all",
        "i would not recommend it",
        "great movie",
        "i loved the music and the story was very good",
        "really terrible",
    ),
    "autocomplete": ("weather in", "how to c", "best pho", "translate ", "paris re", "new york"),
}
Counters = ctypes.Array[ctypes.c_double]  # per process: requests finished, tokens, errors


@dataclass(frozen=True)
class BenchConfig:
    """One load test. Exactly one of `concurrency` (closed loop) and `rate` (open loop) is used."""

    connection: Connection
    task: str
    payloads: tuple[str, ...]
    concurrency: int = 8
    rate: float | None = None
    duration: float | None = 10.0
    requests: int | None = None
    warmup: float = 1.0
    max_tokens: int = 0
    min_tokens: int = 0
    model: str = ""
    timeout: float = 30.0
    processes: int = 1
    seed: int | None = None

    def share(self, index: int) -> BenchConfig:
        """The part of this test that process `index` of `processes` runs."""

        def split(total: int) -> int:
            return total // self.processes + (index < total % self.processes)

        return replace(
            self,
            concurrency=split(self.concurrency),
            rate=None if self.rate is None else self.rate / self.processes,
            requests=None if self.requests is None else split(self.requests),
            processes=1,
            seed=None if self.seed is None else self.seed + index,
        )

    def describe(self) -> dict[str, Any]:
        """The configuration as the JSON report shows it."""
        return {
            "target": self.connection.target,
            "task": self.task,
            "mode": "open" if self.rate is not None else "closed",
            "concurrency": None if self.rate is not None else self.concurrency,
            "rate": self.rate,
            "duration": self.duration,
            "requests": self.requests,
            "warmup": self.warmup,
            "processes": self.processes,
            "max_tokens": self.max_tokens,
            "min_tokens": self.min_tokens,
            "model": self.model,
            "payloads": len(self.payloads),
        }


def tokens_in(event: Any) -> int:
    """How many tokens a response message carries: 1 for a `token` event, n for a `tokens`
    event (n tokens packed into one message), 0 for the final event."""
    kind = event.WhichOneof("event")
    if kind == "tokens":
        return len(event.tokens.tokens)
    return int(kind == "token")


class _Plan:
    """Decides, for each request about to start, whether it is warm-up, measured, or not sent."""

    def __init__(self, config: BenchConfig, start: float) -> None:
        self.measure_from = start + config.warmup
        self.stop_at = self.measure_from + (config.duration or math.inf)
        self.left = config.requests

    def next(self, now: float) -> bool | None:
        """True: a measured request; False: a warm-up one; None: send nothing more."""
        if now < self.measure_from:
            return False
        if now >= self.stop_at or self.left == 0:
            return None
        if self.left is not None:
            self.left -= 1
        return True


class _Worker:
    """One process's load: its client, plan, samples and progress counters."""

    def __init__(self, config: BenchConfig, client: RecurClient, counters: Counters, slot: int):
        self.config = config
        self.client = client
        self.counters = counters
        self.slot = slot * 3
        self.rng = random.Random(config.seed)
        self.samples = Samples()
        self.plan = _Plan(config, time.perf_counter())
        self.cpu_from = math.nan

    def events(self, text: str) -> AsyncIterator[Any]:
        config, client = self.config, self.client
        model, most, least = config.model, config.max_tokens, config.min_tokens
        if config.task == "translation":
            return client.translate(text, model=model, max_tokens=most, min_tokens=least)
        if config.task == "sentiment":
            return client.sentiment(text, model=model)
        return client.complete(text, model=model, max_tokens=most, min_tokens=least)

    async def one(self, *, measured: bool, scheduled: float | None) -> None:
        """Sends one request and records its latencies (from `scheduled`, if given) and code."""
        start = time.perf_counter()
        first, messages, tokens, events, code = math.nan, array("d"), 0, 0, "OK"
        try:
            async for event in self.events(self.rng.choice(self.config.payloads)):
                now = time.perf_counter()
                events += 1
                first = now if events == 1 else first
                carried = tokens_in(event)
                if carried:
                    tokens += carried
                    messages.append(now)
        except RecurError as error:
            code = error.code.name
        end = time.perf_counter()
        self._count(tokens=tokens, failed=code != "OK")
        if not measured:
            self.samples.warmup_requests += 1
            return
        samples, origin = self.samples, start if scheduled is None else scheduled
        samples.codes[code] += 1
        samples.tokens += tokens
        samples.events += events
        if code == "OK":
            samples.ttft.append(first - origin)
            samples.e2e.append(end - origin)
            samples.itl.extend(later - earlier for earlier, later in itertools.pairwise(messages))
            if tokens > 1:
                samples.tpot.append((messages[-1] - messages[0]) / (tokens - 1))
        if scheduled is not None:
            samples.lag.append(start - scheduled)
        bucket = samples.timeline.setdefault(int(end - self.plan.measure_from), [0, 0])
        bucket[0] += 1
        bucket[1] += tokens

    def _count(self, *, tokens: int, failed: bool) -> None:
        """Updates the counters that the progress line reads (from another thread or process)."""
        self.counters[self.slot] += 1
        self.counters[self.slot + 1] += tokens
        self.counters[self.slot + 2] += failed

    async def closed_loop(self) -> None:
        """Runs `concurrency` workers, each sending its next request when the last one ended."""

        async def worker() -> None:
            while (measured := self.plan.next(time.perf_counter())) is not None:
                await self.one(measured=measured, scheduled=None)

        await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))

    async def open_loop(self, rate: float) -> None:
        """Starts requests at Poisson arrivals of `rate` per second, then waits for them all."""
        running: set[asyncio.Task[None]] = set()
        scheduled = time.perf_counter()
        while True:
            scheduled += self.rng.expovariate(rate)
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            if (measured := self.plan.next(scheduled)) is None:
                break
            task = asyncio.create_task(self.one(measured=measured, scheduled=scheduled))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)

    async def measure_cpu(self) -> None:
        """Notes the process's CPU time when the measured phase begins."""
        await asyncio.sleep(max(0.0, self.plan.measure_from - time.perf_counter()))
        self.cpu_from = time.process_time()

    def finish(self) -> Samples:
        """Closes the measured phase: its CPU and wall time join the samples."""
        self.samples.cpu_seconds.append(time.process_time() - self.cpu_from)
        self.samples.wall_seconds.append(time.perf_counter() - self.plan.measure_from)
        return self.samples


async def run_process(config: BenchConfig, *, counters: Counters, slot: int) -> Samples:
    """Runs `config` in this process on its own channel; `slot` is its index in `counters`."""
    client = RecurClient.for_connection(
        config.connection, timeout=config.timeout, retry=NO_RETRIES, as_sent=True
    )
    async with client:
        worker = _Worker(config, client, counters, slot)
        cpu = asyncio.create_task(worker.measure_cpu())
        await (worker.closed_loop() if config.rate is None else worker.open_loop(config.rate))
        await cpu
        return worker.finish()


def _process_main(
    config: BenchConfig, counters: Counters, slot: int, start: Any, results: Any
) -> None:
    start.wait()  # every process begins its clock together, once all have started
    results.put(asyncio.run(run_process(config, counters=counters, slot=slot)))


def check_reachable(config: BenchConfig) -> None:
    """One health call before the load: a server that cannot be reached fails here, once, with
    its RecurError (UNAVAILABLE), instead of every request of the load failing at once, back to
    back. Any other answer (a server without the health service included) lets the load run.

    Raises:
        RecurError: UNAVAILABLE or DEADLINE_EXCEEDED: nothing answered.
    """

    async def ask() -> None:
        client = RecurClient.for_connection(config.connection, timeout=config.timeout)
        async with client:
            await client.health()

    try:
        asyncio.run(ask())
    except RecurError as error:
        if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise


def run(config: BenchConfig, *, counters: Counters) -> Samples:
    """Runs the load test, in `config.processes` processes; returns the merged samples.

    Args:
        config: The test.
        counters: Three shared counters per process (requests, tokens, errors), for progress;
            made with `new_counters`.

    Raises:
        RuntimeError: A load-generating process died.
    """
    if config.processes == 1:
        return asyncio.run(run_process(config, counters=counters, slot=0))
    context = multiprocessing.get_context("spawn")  # grpc does not survive fork
    start, results = context.Barrier(config.processes), context.Queue()
    processes = [
        context.Process(
            target=_process_main,
            args=(config.share(index), counters, index, start, results),
            name=f"recur-bench-{index}",
            daemon=True,
        )
        for index in range(config.processes)
    ]
    for process in processes:
        process.start()
    merged, received = Samples(), 0
    while received < len(processes):
        try:
            merged.merge(results.get(timeout=1))
            received += 1
        except queue.Empty:
            if any(process.exitcode not in (None, 0) for process in processes):
                raise RuntimeError("a load-generating process died; see its error above") from None
    for process in processes:
        process.join()
    return merged


def new_counters(processes: int) -> Counters:
    """Zeroed progress counters for `processes` processes, shareable with spawned ones."""
    return multiprocessing.get_context("spawn").RawArray(ctypes.c_double, 3 * processes)
