"""Scenario 8, the cost of metrics: throughput with the Prometheus endpoint on vs off.

Two servers run side by side: one with `--metrics-port` (scraped every second while it is
loaded, as a Prometheus far more eager than the usual 15 s would), one with `--metrics-port -1`.
Autocomplete loads at concurrency 64 alternate between them, several rounds; the target is the
median of the rounds' on/off ratios. `--metrics-port -1` turns the endpoint off, not the
recording: histograms and counters are updated in both servers, so a py-spy profile of the
scraped server (full run) also says what share of its samples is spent in metrics code
(recording and exposition).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scripts.bench import profile, serving
from scripts.bench.common import Context, Result, Target
from scripts.bench.models import bench_models

TARGET_DIFFERENCE = 0.05
CONCURRENCY = 64
SCRAPE_SECONDS = 1.0


@contextlib.contextmanager
def scraping(url: str | None) -> Iterator[list[int]]:
    """Fetch `url` every second in a thread; yields the sizes of the pages fetched."""
    sizes: list[int] = []
    stop = threading.Event()

    def scrape() -> None:
        while url and not stop.wait(SCRAPE_SECONDS):
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as page:
                sizes.append(len(page.read()))

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        thread.join()


def metrics_share(ctx: Context, server: serving.Server) -> float | None:
    """Share of the scraped server's py-spy samples inside metrics code, under load."""
    if profile.py_spy() is None:
        return None
    seconds = ctx.seconds(5.0, 3.0)
    with tempfile.TemporaryDirectory() as tmp, scraping(server.metrics_url):
        raw = Path(tmp) / "profile.txt"
        spy = profile.start(server.pid, seconds, raw)
        serving.load(server.target, "autocomplete", concurrency=CONCURRENCY, duration=seconds,
                     warmup=ctx.warmup())  # fmt: skip
        spy.wait(timeout=seconds + 30)
        if spy.returncode != 0 or not raw.is_file():
            return None
        shares = profile.summarize(raw)["by_category"]
    return float(next((v for k, v in shares.items() if k.startswith("metrics")), 0.0))


def run(ctx: Context) -> Result:
    models = bench_models(ctx)
    rounds = 2 if ctx.quick else 5
    seconds = ctx.seconds(8.0, 3.0)
    rows: list[dict[str, Any]] = []
    with serving.served(models, metrics=True) as on, serving.served(models, metrics=False) as off:
        for round_ in range(rounds):
            for name, server in (("on", on), ("off", off)):
                with scraping(server.metrics_url) as scrapes:
                    report = serving.load(server.target, "autocomplete", concurrency=CONCURRENCY,
                                          duration=seconds, warmup=ctx.warmup())  # fmt: skip
                row = {"metrics": name, "round": round_ + 1, "scrapes": len(scrapes)}
                row |= serving.summary(report)
                row["scrape_bytes"] = max(scrapes, default=0)
                rows.append(row)
                print(f"  metrics {name:<3} round {round_ + 1}: {row['tokens_per_second']:>8,.0f} "
                      f"tokens/s ({len(scrapes)} scrapes)", flush=True)  # fmt: skip
        share = None if ctx.quick else metrics_share(ctx, on)
        if share is not None:
            print(f"  {share:.1%} of the scraped server's samples are in metrics code", flush=True)
    median = {
        name: statistics.median(r["tokens_per_second"] for r in rows if r["metrics"] == name)
        for name in ("on", "off")
    }
    paired = serving.paired_ratio(rows, "tokens_per_second", by="metrics", top="on", bottom="off")
    difference = abs(paired - 1)
    detail = f"median of {rounds} paired rounds: on / off = {paired:.3f}; medians on "
    detail += f"{median['on']:,.0f} vs off {median['off']:,.0f} tokens/s"
    if share is not None:
        detail += f"; {share:.1%} of the scraped server's samples are in metrics code"
    detail += f"; rounds of one server differ by up to {spread(rows):.1%} (the noise)"
    target = Target(
        "tokens/s with metrics on vs off: abs(on / off - 1)", f"<= {TARGET_DIFFERENCE:.0%}",
        difference, TARGET_DIFFERENCE, higher_is_better=False, unit="%", detail=detail,
    )  # fmt: skip
    return Result(
        scenario="metrics",
        title="Metrics cost: throughput with the Prometheus endpoint on (scraped) vs off",
        settings={
            "concurrency": CONCURRENCY,
            "rounds": rounds,
            "seconds": seconds,
            "scrape_every_seconds": SCRAPE_SECONDS,
        },
        rows=rows,
        targets=[target],
        extra={"median_tokens_per_second": median, "metrics_code_share": share},
        notes=["--metrics-port -1 disables the endpoint; metrics are recorded in both servers"],
    )


def spread(rows: list[dict[str, Any]]) -> float:
    """The largest (max - min) / median of tokens/s among the rounds of one server."""
    found = 0.0
    for name in ("on", "off"):
        values = [r["tokens_per_second"] for r in rows if r["metrics"] == name]
        found = max(found, (max(values) - min(values)) / statistics.median(values))
    return found


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    return table(
        data["rows"],
        [("metrics", "metrics endpoint"), ("round", "round"), ("tokens_per_second", "tokens/s"),
         ("itl_p50_ms", "ITL p50 ms"), ("ttft_p50_ms", "TTFT p50 ms"), ("scrapes", "scrapes"),
         ("scrape_bytes", "bytes/scrape")],
    )  # fmt: skip


def plot(data: dict[str, Any], plt: Any) -> Any:
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, color in (("on", "tab:blue"), ("off", "tab:gray")):
        rows = [r for r in data["rows"] if r["metrics"] == name]
        axis.plot([r["round"] for r in rows], [r["tokens_per_second"] for r in rows], marker="o",
                  color=color, label=f"metrics {name}")  # fmt: skip
    axis.set(xlabel="round", ylabel="tokens/s", title=f"Concurrency {CONCURRENCY}, alternating")
    axis.set_ylim(bottom=0)
    axis.legend()
    return figure
