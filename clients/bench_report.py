"""What `recur bench` measured, and the report it makes of it: JSON, text and an optional plot.

Percentiles are computed exactly, in pure Python, from every sample kept (latencies are kept as
`array('d')`, 8 bytes a sample), interpolating linearly between the closest ranks.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)
MATPLOTLIB_PIN = "matplotlib==3.11.2"
SATURATED_UTILIZATION = 0.8  # of one core: past this, the generator may be what limits the rate


@dataclass
class Samples:
    """The measurements of one load-generating process, or of several merged.

    Latencies are in seconds. `itl` holds the gaps between consecutive messages that carry
    tokens, as vLLM's benchmark counts per chunk: tokens packed into one message arrive together,
    so a gap per token would count zeros that no reader sees. `tpot` holds each request's time per
    output token after its first (from the first token's message to the last's, over the tokens
    after the first), which no packing changes. `timeline` maps each second since the measured
    phase began to [requests finished, tokens received] in it. `cpu_seconds` and `wall_seconds`
    hold one entry per process: its CPU time and wall time over the measured phase (warm-up
    excluded).
    """

    ttft: array[float] = field(default_factory=lambda: array("d"))
    itl: array[float] = field(default_factory=lambda: array("d"))
    tpot: array[float] = field(default_factory=lambda: array("d"))
    e2e: array[float] = field(default_factory=lambda: array("d"))
    lag: array[float] = field(default_factory=lambda: array("d"))
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    tokens: int = 0
    events: int = 0
    warmup_requests: int = 0
    timeline: dict[int, list[int]] = field(default_factory=dict)
    cpu_seconds: list[float] = field(default_factory=list)
    wall_seconds: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Requests of the measured phase, failed ones included."""
        return sum(self.codes.values())

    def merge(self, other: Samples) -> None:
        """Adds the samples of another process to these."""
        for mine, theirs in (
            (self.ttft, other.ttft),
            (self.itl, other.itl),
            (self.tpot, other.tpot),
            (self.e2e, other.e2e),
            (self.lag, other.lag),
        ):
            mine.extend(theirs)
        self.codes.update(other.codes)
        self.tokens += other.tokens
        self.events += other.events
        self.warmup_requests += other.warmup_requests
        for second, (requests, tokens) in other.timeline.items():
            bucket = self.timeline.setdefault(second, [0, 0])
            bucket[0] += requests
            bucket[1] += tokens
        self.cpu_seconds.extend(other.cpu_seconds)
        self.wall_seconds.extend(other.wall_seconds)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of the sorted `ordered`, interpolated; NaN when empty."""
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution_ms(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, p50, p90, p99 and max of `values` (seconds), in milliseconds (None if empty)."""
    ordered = sorted(values)
    stats: dict[str, float | int | None] = {"count": len(ordered)}
    if not ordered:
        return stats | {"mean": None} | {f"p{q}": None for q in PERCENTILES} | {"max": None}
    stats["mean"] = sum(ordered) / len(ordered) * 1e3
    stats.update({f"p{q}": percentile(ordered, q) * 1e3 for q in PERCENTILES})
    stats["max"] = ordered[-1] * 1e3
    return stats


def _generator(samples: Samples, requests: int) -> dict[str, Any]:
    """The generator's own cost: CPU time per request and per event, and per-process load."""
    cpu = sum(samples.cpu_seconds)
    utilization = [
        c / w if w > 0 else 0.0
        for c, w in zip(samples.cpu_seconds, samples.wall_seconds, strict=True)
    ]
    busiest = max(utilization, default=0.0)
    return {
        "processes": len(samples.cpu_seconds),
        "cpu_seconds": cpu,
        "cpu_us_per_request": cpu / requests * 1e6 if requests else None,
        "cpu_us_per_event": cpu / samples.events * 1e6 if samples.events else None,
        "cpu_utilization_per_process": utilization,
        "saturated": busiest > SATURATED_UTILIZATION,
    }


def build(samples: Samples, *, config: dict[str, Any]) -> dict[str, Any]:
    """The report: configuration, counts, throughput, latency distributions, timeline, overhead."""
    requests = samples.requests
    wall = max(samples.wall_seconds, default=0.0)
    report: dict[str, Any] = {
        "config": config,
        "measured_seconds": wall,
        "requests": {
            "warmup": samples.warmup_requests,
            "measured": requests,
            "total": samples.warmup_requests + requests,
            "ok": samples.codes.get("OK", 0),
            "errors": {code: n for code, n in sorted(samples.codes.items()) if code != "OK"},
        },
        "throughput": {
            "requests_per_second": requests / wall if wall else 0.0,
            "tokens_per_second": samples.tokens / wall if wall else 0.0,
            "tokens": samples.tokens,
        },
        "latency_ms": {
            "ttft": distribution_ms(samples.ttft),
            "inter_token": distribution_ms(samples.itl),
            "time_per_token": distribution_ms(samples.tpot),
            "end_to_end": distribution_ms(samples.e2e),
        },
        "timeline": [
            {"second": second, "requests": counts[0], "tokens": counts[1]}
            for second, counts in sorted(samples.timeline.items())
        ],
        "generator": _generator(samples, requests),
    }
    if samples.lag:
        report["latency_ms"]["schedule_lag"] = distribution_ms(samples.lag)
    return report


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_text(report: dict[str, Any]) -> str:
    """The report for people: counts, throughput, a latency table and the generator's cost."""
    requests, throughput, generator = report["requests"], report["throughput"], report["generator"]
    errors = ", ".join(f"{code} {n}" for code, n in requests["errors"].items()) or "none"
    lines = [
        f"requests: {requests['measured']} measured ({requests['ok']} ok) + "
        f"{requests['warmup']} warm-up in {report['measured_seconds']:.2f} s; errors: {errors}",
        f"throughput: {throughput['requests_per_second']:.1f} requests/s, "
        f"{throughput['tokens_per_second']:.1f} tokens/s",
        f"{'latency (ms)':<14}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'count':>9}",
    ]
    for name, stats in report["latency_ms"].items():
        cells = "".join(f"{_ms(stats[key]):>9}" for key in ("p50", "p90", "p99", "max"))
        lines.append(f"{name:<14}{cells}{stats['count']:>9}")
    per_request, per_event = generator["cpu_us_per_request"], generator["cpu_us_per_event"]
    busiest = max(generator["cpu_utilization_per_process"], default=0.0)
    lines.append(
        f"generator: {generator['processes']} process(es), {generator['cpu_seconds']:.2f} CPU s, "
        f"{_ms(per_request)} µs/request, {_ms(per_event)} µs/event, "
        f"busiest process at {busiest:.0%} of a core"
    )
    if generator["saturated"]:
        lines.append(
            "warning: the load generator was busy most of the time; it may be what limits these "
            "numbers. Run with more --processes."
        )
    return "\n".join(lines) + "\n"


def require_matplotlib() -> None:
    """Raises if matplotlib, which `--plot` needs, is not installed.

    Raises:
        RuntimeError: matplotlib is missing; the message says what to install.
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError(
            f"--plot needs matplotlib, which is not installed: pip install {MATPLOTLIB_PIN}"
        )


def plot(report: dict[str, Any], samples: Samples, *, path: str) -> None:
    """Writes a PNG: the end-to-end latency histogram and the throughput of every second.

    Raises:
        RuntimeError: matplotlib is missing.
    """
    require_matplotlib()
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    figure, (latency, throughput) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    latency.hist([value * 1e3 for value in samples.e2e], bins=50)
    latency.set(xlabel="end-to-end latency (ms)", ylabel="requests", title="latency")
    seconds = [point["second"] for point in report["timeline"]]
    throughput.plot(
        seconds, [point["requests"] for point in report["timeline"]], label="requests/s"
    )
    throughput.set(xlabel="second of the measured phase", ylabel="requests/s", title="throughput")
    tokens_axis = throughput.twinx()
    tokens_axis.plot(seconds, [point["tokens"] for point in report["timeline"]], color="tab:orange")
    tokens_axis.set_ylabel("tokens/s")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
