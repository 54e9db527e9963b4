"""`recur bench`: its flags, its live progress line, and where its report goes.

recur bench --task translation --concurrency 16 --duration 30
recur bench --task autocomplete --rate 200 --requests 5000 --processes 2 --json report.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from clients import bench, bench_report
from clients.channel import Connection

BENCH_HELP = """\
Load-test a Recur server and report requests/s, tokens/s, and time to first token, inter-token
and end-to-end latency at p50/p90/p99/max, with errors by status code. --concurrency N is a
closed loop (N requests in flight, each followed at once by the next); --rate R is an open loop
(Poisson arrivals at R requests/s, latencies counted from the scheduled arrival). Requests are
never retried. The report also gives the generator's own CPU cost per request and per event; if
its busiest process was near a full core, add --processes."""


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(value: str) -> int | float:
        with contextlib.suppress(ValueError):
            if 0 < (number := kind(value)) < math.inf:
                return number
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")

    return parse


def whole_number(value: str, *, bits: int = 32, low: str = "expected 0 or more") -> int:
    """A flag's whole number that a request's unsigned `bits`-bit field holds (`recur` and
    `recur bench` share it); `low` says what a negative one should have been."""
    with contextlib.suppress(ValueError):
        if 0 <= (count := int(value)) < 2**bits:
            return count
        if count >= 0:
            raise argparse.ArgumentTypeError(f"expected at most {2**bits - 1}, got {value!r}")
    raise argparse.ArgumentTypeError(f"{low}, got {value!r}")


def _tokens(value: str) -> int:
    return whole_number(value, low="expected 0 or more tokens")


def _non_negative(value: str) -> float:
    with contextlib.suppress(ValueError):
        if 0 <= (seconds := float(value)) < math.inf:
            return seconds
    raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {value!r}")


def add_parser(commands: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    """Adds the `bench` command to the `recur` subcommands `commands`."""
    parser = commands.add_parser(
        "bench", parents=parents, help="load-test the server", description=BENCH_HELP
    )
    add = parser.add_argument
    add("--task", choices=bench.TASKS, default="translation", help="default %(default)s")
    add("--model", default="", metavar="NAME", help="model (default: the task's)")
    add(
        "--max-tokens", type=_tokens, default=0, metavar="N", help="most tokens (0: server default)"
    )
    add(
        "--min-tokens",
        type=_tokens,
        default=0,
        metavar="N",
        help="fewest tokens (no end of sequence before; --min-tokens N --max-tokens N fixes every "
        "answer's length, as vLLM's benchmark does with ignore_eos)",
    )
    add("--payload-file", type=Path, metavar="FILE", help="one request text per line")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_positive(int), default=8, metavar="N")
    load.add_argument("--rate", type=_positive(float), metavar="R", help="requests/s, Poisson")
    add("--duration", type=_positive(float), metavar="SECONDS", help="default 10 s")
    add("--requests", type=_positive(int), metavar="N", help="stop after N measured requests")
    add("--warmup", type=_non_negative, default=1.0, metavar="SECONDS", help="default 1 s")
    add("--processes", type=_positive(int), default=1, metavar="K", help="generator processes")
    add("--seed", type=int, metavar="N", help="seed of the payload choice and the arrivals")
    add("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE")
    add(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="latency histogram and throughput (matplotlib)",
    )


def _payloads(args: argparse.Namespace) -> tuple[str, ...]:
    if args.payload_file is None:
        return bench.SAMPLE_PAYLOADS[args.task]
    lines = args.payload_file.read_text(encoding="utf-8").splitlines()
    payloads = tuple(line for line in lines if line.strip())
    if not payloads:
        raise OSError(f"{args.payload_file} holds no request text (one a line)")
    return payloads


def config_from(args: argparse.Namespace) -> bench.BenchConfig:
    """The load test the parsed `recur bench` flags describe."""
    return bench.BenchConfig(
        connection=Connection.from_flags(args),
        task=args.task,
        payloads=_payloads(args),
        concurrency=args.concurrency,
        rate=args.rate,
        duration=10.0 if args.duration is None and args.requests is None else args.duration,
        requests=args.requests,
        warmup=args.warmup,
        max_tokens=args.max_tokens,
        min_tokens=args.min_tokens,
        model=args.model,
        timeout=args.timeout,
        processes=args.processes,
        seed=args.seed,
    )


@contextlib.contextmanager
def progress(counters: bench.Counters, *, stream: TextIO) -> Iterator[None]:
    """Prints a progress line to `stream` about once a second while the block runs.

    On a terminal the line is rewritten in place; otherwise one line is written each time.
    """
    stop = threading.Event()
    started = time.perf_counter()
    end = "\r" if stream.isatty() else "\n"

    def report() -> None:
        last = (0.0, 0.0)
        while not stop.wait(1.0):
            totals = [sum(counters[offset::3]) for offset in range(3)]
            requests, tokens, errors = totals
            elapsed = time.perf_counter() - started
            stream.write(
                f"[{elapsed:6.1f} s] {requests:8.0f} requests {requests - last[0]:7.0f}/s "
                f"{tokens - last[1]:8.0f} tokens/s {errors:6.0f} errors{end}"
            )
            stream.flush()
            last = (requests, tokens)

    thread = threading.Thread(target=report, name="recur-bench-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if end == "\r":
            stream.write("\n")


def run(args: argparse.Namespace) -> int:
    """Runs `recur bench`: the load, then the report on stdout (and to --json, --plot).

    Returns:
        0, or 1 when every measured request failed or a flag asked for a missing package.
    """
    if args.plot is not None:
        try:
            bench_report.require_matplotlib()
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    config = config_from(args)
    bench.check_reachable(config)
    counters = bench.new_counters(config.processes)
    with progress(counters, stream=sys.stderr):
        samples = bench.run(config, counters=counters)
    report = bench_report.build(samples, config=config.describe())
    print(bench_report.format_text(report), end="", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.plot is not None:
        bench_report.plot(report, samples, path=str(args.plot))
    return 0 if report["requests"]["ok"] else 1
