"""Scenario 2, continuous batching: `recur-serve` with batching on and with `--max-batch-size 1`.

Two servers run side by side on the same bundles, one batching (the defaults) and one not, and
each concurrency level loads one and then the other (which goes first alternates from one pair
of runs to the next), so both see the same machine. Both must stream the same tokens for the
load's payloads (asked one at a time and all at once, before and after the loads), and no
request may fail: otherwise the targets are missed, whatever their ratios. Every load
is a closed loop of the `recur bench` generator: tokens/s, time to first token and inter-token
latency p50/p99. At concurrency 64 (the targets' level) the full run repeats the pair three
times: the table shows medians, the on/off target is the median of the rounds' ratios.

The targets compare batching on with off at concurrency 64, and the server with the ceiling
(raw ONNX Runtime at batch 64, measured here too). A py-spy profile of the batching server at
concurrency 64 says where its time goes; the bare gRPC echo server at the same concurrency says
how much of the gap the transport alone explains, one token per message and packed (the first
token alone, the rest in one message: the most any packing of these streams can reach).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.bench import ceiling, profile, serving
from scripts.bench.common import Context, Result, Target, alternated, ratio
from scripts.bench.models import bench_models, bundle_for

MODES = {"on": (), "off": ("--max-batch-size", "1")}
TARGET_SPEEDUP = 4.0
TARGET_CEILING_SHARE = 0.2  # issue 16: 20% of the raw ONNX Runtime ceiling at batch 64
PROFILE_CONCURRENCY = 64


def levels(ctx: Context) -> tuple[int, ...]:
    return (1, 64) if ctx.quick else (1, 8, 64, 256)


def tasks(ctx: Context) -> tuple[str, ...]:
    return ("autocomplete",) if ctx.quick else ("autocomplete", "translation")


def rounds(ctx: Context, concurrency: int) -> int:
    """Rounds at a concurrency level: the targets' level gets more, so its ratio is a median."""
    return 3 if concurrency == 64 and not ctx.quick else 1


def measure(ctx: Context, models: Path, task: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every level, both servers in each round, alternating which goes first from one pair of
    runs to the next; one row per run, and the problems found: the two servers' tokens for the
    load's payloads differ (one at a time and all at once, before and after), or a request
    failed."""
    runs = []
    with contextlib.ExitStack() as stack:
        servers = {mode: stack.enter_context(serving.served(models, *flags))
                   for mode, flags in MODES.items()}  # fmt: skip
        targets = {mode: server.target for mode, server in servers.items()}
        _, problems = serving.compare_answers(targets, (task,), "before the loads")
        pair = 0
        for concurrency in levels(ctx):
            for round_ in range(rounds(ctx, concurrency)):
                for mode, server in alternated(list(servers.items()), pair):
                    report = serving.load(
                        server.target, task, concurrency=concurrency,
                        duration=ctx.seconds(8.0, 3.0), warmup=ctx.warmup(),
                    )  # fmt: skip
                    run = {"task": task, "batching": mode, "concurrency": concurrency}
                    run |= {"round": round_ + 1, **serving.summary(report)}
                    runs.append(run)
                    print(_line(run), flush=True)
                pair += 1
        _, later = serving.compare_answers(targets, (task,), "after the loads")
    problems += later + serving.run_errors(runs, "task", "batching", "concurrency", "round")
    return runs, problems


def _line(row: dict[str, Any]) -> str:
    return (
        f"  {row['task']:<12} batching {row['batching']:<3} c={row['concurrency']:<4} "
        f"{row['tokens_per_second']:>8,.0f} tokens/s  ttft p50 {row['ttft_p50_ms']:7.2f} ms  "
        f"itl p50 {row['itl_p50_ms']:6.2f} p99 {row['itl_p99_ms']:7.2f} ms  "
        f"errors {row['failed_with_warmup']}"
    )


def profiled(
    ctx: Context, models: Path, mode: str, concurrency: int = PROFILE_CONCURRENCY
) -> dict[str, Any]:
    """A py-spy profile of the server (batching `mode`) under autocomplete load."""
    if profile.py_spy() is None:
        return {"error": "py-spy is not installed"}
    seconds = ctx.seconds(5.0, 3.0)
    with serving.served(models, *MODES[mode]) as server, tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        spy = None
        try:
            warm = ctx.warmup()
            async_start = time.perf_counter()
            spy = profile.start(server.pid, seconds, raw)
            report = serving.load(
                server.target, "autocomplete", concurrency=concurrency,
                duration=seconds, warmup=warm,
            )  # fmt: skip
            spy.wait(timeout=seconds + 30)
        except (OSError, RuntimeError) as error:
            return {"error": repr(error)}
        if spy.returncode != 0 or not raw.is_file():
            return {"error": f"py-spy failed (exit {spy.returncode}); is ptrace allowed?"}
        summary = profile.summarize(raw)
        summary["tokens_per_second_while_sampled"] = report["throughput"]["tokens_per_second"]
        summary["itl_p50_ms_while_sampled"] = report["latency_ms"]["inter_token"]["p50"]
        summary["seconds"] = time.perf_counter() - async_start
        summary["concurrency"] = concurrency
        print(f"  profile (batching {mode}, c={concurrency}):", flush=True)
        print("    " + profile.format_summary(summary).replace("\n", "\n    "), flush=True)
        return summary


def ceilings(models: Path, task: str, seconds: float) -> dict[str, Any]:
    """The raw ONNX Runtime ceiling at batch 64, measured in this run, with `gain_over_batch_1`:
    what batching gains in ONNX Runtime itself (tokens/s at batch 64 / at batch 1)."""
    one, row = ceiling.ceiling_rows(models, task, (1, 64), seconds)
    row["gain_over_batch_1"] = row["ceiling_tokens_per_second"] / one["ceiling_tokens_per_second"]
    return row


def run(ctx: Context) -> Result:
    models = bench_models(ctx)
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    for task in tasks(ctx):
        measured, found = measure(ctx, models, task)
        runs, problems = runs + measured, problems + found
    rows = serving.medians(runs, ("task", "batching", "concurrency"))
    limits = {task: ceilings(models, task, 0.3 if ctx.quick else 1.0) for task in tasks(ctx)}
    transport, packed = ceiling.transport_rows(ctx, (PROFILE_CONCURRENCY,))
    profiles = {"on": profiled(ctx, models, "on")}
    if not ctx.quick:
        profiles["off"] = profiled(ctx, models, "off")
    targets = []
    for task in tasks(ctx):
        at = {r["batching"]: r for r in rows if r["task"] == task and r["concurrency"] == 64}
        on, off = at["on"]["tokens_per_second"], at["off"]["tokens_per_second"]
        limit = limits[task]["ceiling_tokens_per_second"]
        speedup = serving.paired_ratio(runs, "tokens_per_second", by="batching", top="on",
                                       bottom="off", task=task, concurrency=64)  # fmt: skip
        targets.append(Target(
            f"{task}: batching on / off tokens/s at concurrency 64", f">= {TARGET_SPEEDUP:g}x",
            speedup, TARGET_SPEEDUP,
            detail=f"median of {at['on']['rounds']} paired rounds; medians on {on:,.0f} vs off "
            f"{off:,.0f} tokens/s; raw ONNX Runtime itself gains "
            f"{limits[task]['gain_over_batch_1']:.1f}x from batch 1 to 64",
        ))  # fmt: skip
        targets.append(Target(
            f"{task}: server c=64 / raw ORT ceiling at batch 64",
            f">= {TARGET_CEILING_SHARE:.0%}", ratio(on, limit), TARGET_CEILING_SHARE, unit="%",
            detail=f"server {on:,.0f} vs ceiling {limit:,.0f} tokens/s "
            f"({limits[task]['best']}); the bare gRPC echo server reaches "
            f"{transport['tokens_per_second']:,.0f} tokens/s at c=64 one token per message "
            f"({ratio(transport['tokens_per_second'], limit) or 0:.1%} of this ceiling) and "
            f"{packed['tokens_per_second']:,.0f} with all but the first token in one message "
            f"({ratio(packed['tokens_per_second'], limit) or 0:.1%}), doing nothing else",
        ))  # fmt: skip
    result = Result(
        scenario="batching",
        title="Continuous batching: recur-serve with batching on vs --max-batch-size 1",
        settings={
            "concurrency": list(levels(ctx)),
            "tasks": list(tasks(ctx)),
            "modes": {m: list(f) for m, f in MODES.items()},
            "server_flags": list(serving.DEFAULT_FLAGS),
            "max_tokens": serving.MAX_TOKENS,
            "seconds": ctx.seconds(8.0, 3.0),
            "warmup": ctx.warmup(),
            "generator_processes": 1,
            "bundles": {t: str(bundle_for(models, t)) for t in tasks(ctx)},
        },
        rows=rows,
        targets=targets,
        extra={
            "ceiling_at_64": limits,
            "transport_at_64": transport,
            "packed_transport_at_64": packed,
            "profiles": profiles,
            "runs": runs,
            "problems": problems,
        },
        notes=[
            "the load generator runs on the same 2 cores as the server; its CPU share is in "
            "the rows (generator CPU, of one core)",
            "batching on and off streamed the same tokens for every payload, one at a time and "
            f"all at once, and no request failed: {not problems}",
        ],
    )
    result.fail_targets(problems)
    for line in problems:
        print(f"  does not count: {line}", flush=True)
    return result


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    lines = table(
        data["rows"],
        [("task", "task"), ("batching", "batching"), ("concurrency", "concurrency"),
         ("tokens_per_second", "tokens/s"), ("tokens_per_request", "tokens/req"),
         ("ttft_p50_ms", "TTFT p50 ms"), ("ttft_p99_ms", "TTFT p99 ms"),
         ("itl_p50_ms", "ITL p50 ms"), ("itl_p99_ms", "ITL p99 ms"), ("tpot_p50_ms", "TPOT p50 ms"),
         ("generator_cpu_utilization", "generator CPU")],
    )  # fmt: skip
    return lines + render_profiles(data)


def render_profiles(data: dict[str, Any]) -> list[str]:
    """The profiles' shares by category, one list per profile."""
    lines: list[str] = []
    for mode, summary in data.get("profiles", {}).items():
        if "by_category" not in summary:
            lines += ["", f"Profile (batching {mode}): {summary.get('error')}"]
            continue
        lines += ["", f"Where the batching-{mode} server's time goes at concurrency "
                  f"{summary.get('concurrency', 64)} (py-spy, {summary['samples']} samples):",
                  ""]  # fmt: skip
        lines += [f"- {share:.1%} {name}" for name, share in summary["by_category"].items()]
    return lines


def plot(data: dict[str, Any], plt: Any) -> Any:
    tasks_ = list(dict.fromkeys(r["task"] for r in data["rows"]))
    figure, axes = plt.subplots(2, len(tasks_), figsize=(6 * len(tasks_), 8), squeeze=False)
    for column, task in enumerate(tasks_):
        top, bottom = axes[0][column], axes[1][column]
        for mode in MODES:
            rows = [r for r in data["rows"] if r["task"] == task and r["batching"] == mode]
            xs = [r["concurrency"] for r in rows]
            top.plot(xs, [r["tokens_per_second"] for r in rows], marker="o",
                     label=f"batching {mode}")  # fmt: skip
            bottom.plot(xs, [r["itl_p50_ms"] for r in rows], marker="o", label=f"{mode} p50")
            bottom.plot(xs, [r["itl_p99_ms"] for r in rows], marker="x", linestyle="--",
                        label=f"{mode} p99")  # fmt: skip
        limit = data.get("ceiling_at_64", {}).get(task, {}).get("ceiling_tokens_per_second")
        if limit:
            top.axhline(limit, color="k", linestyle=":", label="raw ORT ceiling, batch 64")
        transport = data.get("transport_at_64", {}).get("tokens_per_second")
        if transport and task == "autocomplete":
            top.axhline(transport, color="gray", linestyle="--", label="gRPC echo, c=64")
        packed = data.get("packed_transport_at_64", {}).get("tokens_per_second")
        if packed and task == "autocomplete":
            top.axhline(packed, color="gray", linestyle="-.", label="gRPC echo, packed, c=64")
        top.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="tokens/s",
                title=f"{task}: throughput")  # fmt: skip
        bottom.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="inter-token ms",
                   title=f"{task}: inter-token latency")  # fmt: skip
        top.legend(fontsize=8)
        bottom.legend(fontsize=8)
    return figure
