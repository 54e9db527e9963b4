"""`recur-serve` as a user runs it (its own process, real flags) and loads driven by `recur bench`.

`served(models, *flags)` starts the server on free ports and waits until it says ready; `load`
runs one closed-loop test with the load generator of `clients/bench.py` and returns its report
(the JSON `recur bench --json` writes), trimmed of the per-second timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients import bench, bench_report
from clients.calls import NO_RETRIES, RecurError
from clients.channel import Connection
from clients.sdk import RecurClient
from scripts.bench.common import ROOT, free_port

# Room for 1,000 sessions and concurrency 256 without admission refusing anyone.
DEFAULT_FLAGS = ("--max-streams", "2048", "--state-slots", "2048", "--reload-seconds", "0")
TRANSLATION_PAYLOADS = bench.SAMPLE_PAYLOADS["translation"]
AUTOCOMPLETE_PAYLOADS = bench.SAMPLE_PAYLOADS["autocomplete"]
# Every answer streams exactly this many tokens (`min_tokens` = `max_tokens`, as vLLM's benchmark
# fixes output lengths with ignore_eos): the benchmark's small bundles would otherwise end their
# translations after about 3 tokens, and a load of 3-token answers measures requests, not streams.
MAX_TOKENS = 32


@dataclass
class Server:
    process: subprocess.Popen[str]
    target: str
    metrics_url: str | None
    flags: tuple[str, ...]

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def served(models: Path, *flags: str, metrics: bool = True) -> Iterator[Server]:
    """A `recur-serve` process on free ports, stopped (SIGTERM, drained) on exit."""
    metrics_port = str(free_port()) if metrics else "-1"
    all_flags = (*DEFAULT_FLAGS, "--metrics-port", metrics_port, *flags)
    command = [sys.executable, "-m", "services.server", "--models", str(models)]
    command += ["--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1", *all_flags]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    assert process.stdout is not None
    seen: list[str] = []
    target = None
    try:
        for line in process.stdout:
            seen.append(line)
            if match := re.search(r"listening on ([\d.]+:\d+)", line):
                target = match.group(1)
            if line.startswith("recur-serve: ready"):
                break
        if target is None or process.poll() is not None:
            raise RuntimeError("recur-serve exited before it was ready:\n" + "".join(seen))
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics else None
        # Drain the server's output so a chatty log never blocks it on a full pipe.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        yield Server(process, target, metrics_url, tuple(all_flags))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def payloads(task: str) -> tuple[str, ...]:
    return TRANSLATION_PAYLOADS if task == "translation" else AUTOCOMPLETE_PAYLOADS


def load(
    target: str,
    task: str,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    max_tokens: int = MAX_TOKENS,
    seed: int = 0,
) -> dict[str, Any]:
    """One closed-loop load test of `task` at `concurrency`; the `recur bench` report."""
    config = bench.BenchConfig(
        connection=Connection(target),
        task=task,
        payloads=payloads(task),
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
        max_tokens=max_tokens,
        min_tokens=max_tokens,
        timeout=120.0,
        seed=seed,
    )
    counters = bench.new_counters(1)
    samples = bench.run(config, counters=counters)
    report = bench_report.build(samples, config=config.describe())
    report.pop("timeline")
    report["requests"]["failed_with_warmup"] = int(counters[2])  # the measured `errors` + warm-up's
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of a load report that the tables show."""
    latency = report["latency_ms"]
    requests = report["requests"]
    return {
        "tokens_per_second": report["throughput"]["tokens_per_second"],
        "requests_per_second": report["throughput"]["requests_per_second"],
        "tokens_per_request": report["throughput"]["tokens"] / max(requests["ok"], 1),
        "ttft_p50_ms": latency["ttft"]["p50"],
        "ttft_p99_ms": latency["ttft"]["p99"],
        "itl_p50_ms": latency["inter_token"]["p50"],
        "itl_p99_ms": latency["inter_token"]["p99"],
        "tpot_p50_ms": latency["time_per_token"]["p50"],
        "e2e_p50_ms": latency["end_to_end"]["p50"],
        "requests": requests["measured"],
        "errors": requests["errors"],
        "failed_with_warmup": requests.get("failed_with_warmup", 0),
        "generator_cpu_utilization": max(
            report["generator"]["cpu_utilization_per_process"], default=0.0
        ),
    }


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per distinct `keys`: the median of every number over its rounds (in order)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in keys), []).append(run)
    rows = []
    for group in groups.values():
        row = dict(group[0])
        for name, value in group[0].items():
            values = [r[name] for r in group if isinstance(r.get(name), int | float)]
            if isinstance(value, int | float) and name not in keys and len(values) == len(group):
                row[name] = statistics.median(values)
        row["rounds"] = len(group)
        row.pop("round", None)
        rows.append(row)
    return rows


def paired_ratio(
    runs: list[dict[str, Any]], field: str, *, by: str, top: Any, bottom: Any, **where: Any
) -> float:
    """Median over rounds of `top`'s `field` / `bottom`'s, the two taken in the same round."""
    chosen = [r for r in runs if all(r[k] == v for k, v in where.items())]
    rounds = sorted({r["round"] for r in chosen})
    ratios = []
    for round_ in rounds:
        pair = {r[by]: r[field] for r in chosen if r["round"] == round_}
        ratios.append(pair[top] / pair[bottom])
    return statistics.median(ratios)


def run_errors(runs: list[dict[str, Any]], *keys: str) -> list[str]:
    """One line per load run that had failed requests (warm-up included), named by `keys`."""
    found = []
    for run in runs:
        codes = dict(run.get("errors") or {})
        failed = max(sum(codes.values()), run.get("failed_with_warmup", 0))
        if failed:
            name = " ".join(f"{k}={run[k]}" for k in keys if k in run)
            shown = ", ".join(f"{code} {n}" for code, n in codes.items()) or "in warm-up"
            found.append(f"{name}: {failed} failed requests ({shown})")
    return found


@functools.cache
def server_help() -> str:
    """`recur-serve --help` as this checkout prints it."""
    command = [sys.executable, "-m", "services.server", "--help"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    return done.stdout


def has_flag(flag: str, help_text: str | None = None) -> bool:
    """Whether `recur-serve` takes `flag` (by its help)."""
    text = server_help() if help_text is None else help_text
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def flag_default(flag: str, help_text: str | None = None) -> str | None:
    """The `(default: ...)` that `recur-serve --help` gives `flag`; None without the flag."""
    text = server_help() if help_text is None else help_text
    entry = re.search(rf"^\s+{re.escape(flag)}\b.*?\(default: ([^)]*)\)", text, re.M | re.S)
    return entry.group(1) if entry else None


async def answers(target: str, task: str, *, concurrent: bool = False) -> list[list[int]]:
    """The token ids `target` streams for each of the task's payloads, asked as the load
    generator asks (greedy, exactly `MAX_TOKENS`): one at a time, or all at once (batched
    together)."""
    async with RecurClient(target, timeout=60.0, retry=NO_RETRIES) as client:

        async def one(text: str) -> list[int]:
            events: AsyncIterator[Any]
            if task == "translation":
                events = client.translate(text, max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS)
            else:
                events = client.complete(text, max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS)
            # Ids, not texts: how a token's text is detokenized is each server's own choice.
            return [e.token.id async for e in events if e.HasField("token")]

        if concurrent:
            return list(await asyncio.gather(*(one(text) for text in payloads(task))))
        return [await one(text) for text in payloads(task)]


def compare_answers(
    servers: dict[str, str], tasks: tuple[str, ...], when: str
) -> tuple[dict[str, bool], list[str]]:
    """Every server's tokens for every payload, asked one at a time and all at once: whether
    they are all the same, per task, and the differences (or failures) found."""
    same: dict[str, bool] = {}
    problems: list[str] = []
    for task in tasks:
        found: dict[str, list[list[int]]] = {}
        try:
            for name, target in servers.items():
                found[f"{name} (one at a time)"] = asyncio.run(answers(target, task))
                found[f"{name} (all at once)"] = asyncio.run(answers(target, task, concurrent=True))
        except RecurError as error:
            problems.append(f"{task} answers {when}: {error}")
            same[task] = False
            continue
        unlike = differences(found, task)
        same[task] = not unlike
        problems += [f"{when}: {line}" for line in briefly(unlike)]
    return same, problems


def differences(found: dict[str, list[list[int]]], task: str) -> list[str]:
    """Where the answers in `found` (name: `answers`) differ from the first one's, by payload."""
    (first, expected), *others = found.items()
    lines = []
    for name, got in others:
        for text, want, have in zip(payloads(task), expected, got, strict=True):
            if want != have:
                lines.append(f"{task} {text!r}: {first} {want} vs {name} {have}")
    return lines


def briefly(lines: list[str], limit: int = 3) -> list[str]:
    """The first `limit` lines, and how many more there were."""
    more = [f"and {len(lines) - limit} more"] if len(lines) > limit else []
    return lines[:limit] + more
