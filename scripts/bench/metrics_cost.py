"""Scenario 8, the cost of metrics: throughput with recording on against recording off.

Three servers run side by side: `on` records metrics and serves them on `--metrics-port`,
scraped every second while it is loaded (a Prometheus far more eager than the usual 15 s);
`no endpoint` records them but serves no endpoint (`--metrics-port -1`); `off` records nothing
(`--no-metrics`). Autocomplete loads at concurrency 64 visit the three in turn, the order
reversed every other round, several rounds; the target is the median of the rounds' on/off
ratios (recording and exposition together), and the detail splits it into recording (no
endpoint / off) and the scraped endpoint (on / no endpoint). After the loads, `off`'s own
endpoint must show no generated tokens (a real switch) and `on`'s must show them; all three
must stream the same tokens for the load's payloads, and no request may fail, or the target
is missed. A py-spy profile of the scraped server (full run) says what share of its samples is
spent in metrics code. Without a `--no-metrics` flag in `recur-serve --help` the scenario is
skipped: the endpoint alone says nothing of what recording costs.
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
from scripts.bench.common import Context, Result, Target, alternated
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


NO_METRICS = "--no-metrics"
MODES = ("on", "no endpoint", "off")


def generated_tokens(url: str | None) -> float | None:
    """The sum of `recur_generated_tokens_total` on a metrics page; None when it cannot be read."""
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=5) as page:
            text = page.read().decode()
    except OSError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("recur_generated_tokens_total{", "recur_generated_tokens_total "))
    )


def switch_problems(on: serving.Server, off: serving.Server) -> list[str]:
    """Whether recording was really on in `on` and off in `off`, by their own counters."""
    problems = []
    if not generated_tokens(on.metrics_url):
        problems.append("the recording server's endpoint shows no generated tokens")
    if counted := generated_tokens(off.metrics_url):
        problems.append(f"{NO_METRICS} still recorded {counted:,.0f} generated tokens")
    return problems


def measure(ctx: Context, servers: dict[str, serving.Server], rounds: int) -> list[dict[str, Any]]:
    """Each round loads every server in turn (the order reversed every other round)."""
    rows: list[dict[str, Any]] = []
    for round_ in range(rounds):
        for name, server in alternated(list(servers.items()), round_):
            scraped = server.metrics_url if name == "on" else None
            with scraping(scraped) as scrapes:
                report = serving.load(
                    server.target, "autocomplete", concurrency=CONCURRENCY,
                    duration=ctx.seconds(8.0, 3.0), warmup=ctx.warmup(),
                )  # fmt: skip
            row = {"metrics": name, "round": round_ + 1, "scrapes": len(scrapes)}
            row |= serving.summary(report)
            row["scrape_bytes"] = max(scrapes, default=0)
            rows.append(row)
            print(f"  metrics {name:<11} round {round_ + 1}: {row['tokens_per_second']:>8,.0f} "
                  f"tokens/s ({len(scrapes)} scrapes, errors {row['failed_with_warmup']})",
                  flush=True)  # fmt: skip
    return rows


def run(ctx: Context) -> Result:
    title = "Metrics cost: throughput with metrics recorded (and scraped) vs recording off"
    if not serving.has_flag(NO_METRICS):
        return Result("metrics", title, status="skipped",
                      reason=f"recur-serve --help lists no {NO_METRICS}: recording cannot be "
                      "turned off, and the endpoint alone does not measure its cost")  # fmt: skip
    models = bench_models(ctx)
    rounds = 2 if ctx.quick else 5
    with contextlib.ExitStack() as stack:
        servers = {
            "on": stack.enter_context(serving.served(models, metrics=True)),
            "no endpoint": stack.enter_context(serving.served(models, metrics=False)),
            "off": stack.enter_context(serving.served(models, NO_METRICS, metrics=True)),
        }
        targets = {name: server.target for name, server in servers.items()}
        _, problems = serving.compare_answers(targets, ("autocomplete",), "before the loads")
        rows = measure(ctx, servers, rounds)
        problems += switch_problems(servers["on"], servers["off"])
        _, later = serving.compare_answers(targets, ("autocomplete",), "after the loads")
        problems += later + serving.run_errors(rows, "metrics", "round")
        share = None if ctx.quick else metrics_share(ctx, servers["on"])
        if share is not None:
            print(f"  {share:.1%} of the scraped server's samples are in metrics code", flush=True)
    median = {
        name: statistics.median(r["tokens_per_second"] for r in rows if r["metrics"] == name)
        for name in MODES
    }

    def paired(top: str, bottom: str) -> float:
        return serving.paired_ratio(rows, "tokens_per_second", by="metrics", top=top,
                                    bottom=bottom)  # fmt: skip

    whole, recording, endpoint = (
        paired("on", "off"),
        paired("no endpoint", "off"),
        paired("on", "no endpoint"),
    )
    detail = f"median of {rounds} paired rounds: on / off = {whole:.3f} (recording alone: no "
    detail += f"endpoint / off = {recording:.3f}; the scraped endpoint: on / no endpoint = "
    detail += f"{endpoint:.3f}); medians on {median['on']:,.0f}, no endpoint "
    detail += f"{median['no endpoint']:,.0f}, off {median['off']:,.0f} tokens/s"
    if share is not None:
        detail += f"; {share:.1%} of the scraped server's samples are in metrics code"
    detail += f"; rounds of one server differ by up to {spread(rows):.1%} (the noise)"
    target = Target(
        "tokens/s with metrics recorded and scraped vs recording off: abs(on / off - 1)",
        f"<= {TARGET_DIFFERENCE:.0%}", abs(whole - 1), TARGET_DIFFERENCE,
        higher_is_better=False, unit="%", detail=detail,
    )  # fmt: skip
    result = Result(
        scenario="metrics",
        title=title,
        settings={
            "concurrency": CONCURRENCY,
            "rounds": rounds,
            "seconds": ctx.seconds(8.0, 3.0),
            "scrape_every_seconds": SCRAPE_SECONDS,
            "servers": {
                "on": "--metrics-port N, scraped",
                "no endpoint": "--metrics-port -1",
                "off": f"{NO_METRICS} (its endpoint read once, after the loads)",
            },
        },
        rows=rows,
        targets=[target],
        extra={
            "median_tokens_per_second": median,
            "ratios": {"on/off": whole, "no endpoint/off": recording, "on/no endpoint": endpoint},
            "metrics_code_share": share,
            "problems": problems,
        },
        notes=[f"{NO_METRICS} turns recording off; --metrics-port -1 only the endpoint"],
    )
    result.fail_targets(problems)
    for line in problems:
        print(f"  does not count: {line}", flush=True)
    return result


def spread(rows: list[dict[str, Any]]) -> float:
    """The largest (max - min) / median of tokens/s among the rounds of one server."""
    found = 0.0
    for name in MODES:
        values = [r["tokens_per_second"] for r in rows if r["metrics"] == name]
        found = max(found, (max(values) - min(values)) / statistics.median(values))
    return found


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    return table(
        data["rows"],
        [("metrics", "metrics"), ("round", "round"), ("tokens_per_second", "tokens/s"),
         ("itl_p50_ms", "ITL p50 ms"), ("ttft_p50_ms", "TTFT p50 ms"), ("scrapes", "scrapes"),
         ("scrape_bytes", "bytes/scrape")],
    )  # fmt: skip


def plot(data: dict[str, Any], plt: Any) -> Any:
    figure, axis = plt.subplots(figsize=(7, 4))
    colors = ("tab:blue", "tab:orange", "tab:gray")
    for name, color in zip(MODES, colors, strict=True):
        rows = [r for r in data["rows"] if r["metrics"] == name]
        axis.plot([r["round"] for r in rows], [r["tokens_per_second"] for r in rows], marker="o",
                  color=color, label=f"metrics {name}")  # fmt: skip
    axis.set(xlabel="round", ylabel="tokens/s", title=f"Concurrency {CONCURRENCY}, alternating")
    axis.set_ylim(bottom=0)
    axis.legend()
    return figure
