"""Scenario 3, the peer: Recur against the same graphs served with Ray Serve (`peer.py`).

Both run at once (Ray with `num_cpus=2`, no dashboard; an idle Ray takes more CPU than an idle
Recur, so this leans against Recur), and Ray Serve's replica has as many batches in flight
(`max_concurrent_batches`) as `recur-serve` has executor threads (`--executor-workers`, read
from its help). Each round loads both with the same load generator at concurrency 1 and 64,
Recur first in odd rounds and Ray Serve first in even ones (two rounds; the targets are
medians of the paired ratios). Before and after measuring, both are asked for the payloads the
load generator sends, one at a time and all at once (batched): every answer must be the same
tokens on both servers (greedy decoding of the same graphs). A target counts only when the
tokens matched and no request failed on either server, warm-up included; otherwise it is
missed, whatever its ratio. A py-spy profile of Recur at concurrency 1 (full run) says where
its inter-token latency goes. Targets: Recur >= 10x Ray Serve's tokens/s at concurrency 64,
and <= 0.5x its p50 inter-token latency at concurrency 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clients.calls import NO_RETRIES, RecurError
from clients.sdk import RecurClient
from scripts.bench import batching, serving
from scripts.bench.common import Context, Result, Target, alternated, free_port, ray_env
from scripts.bench.models import bench_models, bundle_for

LEVELS = (1, 64)
ROUNDS = 2  # each server goes first once, in the quick run too
TARGET_THROUGHPUT = 10.0  # issue 16: 10x Ray Serve's tokens/s at 64 streams, same tokens
TARGET_LATENCY = 0.5
SERVICERS = [
    "protos.recur.v1.inference_pb2_grpc.add_AutocompleteServiceServicer_to_server",
    "protos.recur.v1.inference_pb2_grpc.add_TranslationServiceServicer_to_server",
]


def ray_serve_missing() -> str | None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
        from ray.serve.config import gRPCOptions  # noqa: F401
    except ImportError as error:
        return f"ray[serve] is not installed ({error}); pip install -c constraints.txt '.[bench]'"
    return None


@contextlib.contextmanager
def ray_peer(models: Path, concurrent_batches: int) -> Iterator[str]:
    """Ray Serve with the peer deployment on a gRPC port; yields its `host:port`."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from scripts.bench.peer import RecurPeer

    port = free_port()
    os.environ.update(ray_env())  # read by the raylet that ray.init starts (worker niceness)
    ray.init(
        num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
        runtime_env={"env_vars": ray_env()},
    )  # fmt: skip
    try:
        serve.start(
            http_options=HTTPOptions(host="127.0.0.1", port=free_port()),
            grpc_options=gRPCOptions(port=port, grpc_servicer_functions=SERVICERS),
        )
        app = RecurPeer.bind(
            str(bundle_for(models, "autocomplete")),
            str(bundle_for(models, "translation")),
            concurrent_batches,
        )
        serve.run(app, name="recur-peer", route_prefix="/recur-peer")
        target = f"127.0.0.1:{port}"
        _wait_ready(target)
        yield target
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def _wait_ready(target: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(_ready(target))
            return
        except RecurError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


async def _ready(target: str) -> None:
    async with RecurClient(target, timeout=60.0, retry=NO_RETRIES) as client:
        async for _ in client.complete("ready", max_tokens=1):
            pass


def concurrent_batches() -> int:
    """Recur's executor threads (its `--executor-workers` default), the peer's batches in flight."""
    found = serving.flag_default("--executor-workers")
    return int(found) if found and found.isdigit() else 1


def measure(ctx: Context, servers: dict[str, str], tasks: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each level, both servers in every round, alternating which goes first; one row per run."""
    runs = []
    for task in tasks:
        for concurrency in LEVELS:
            for round_ in range(ROUNDS):
                for server, target in alternated(list(servers.items()), round_):
                    report = serving.load(
                        target, task, concurrency=concurrency,
                        duration=ctx.seconds(8.0, 3.0), warmup=ctx.warmup(),
                    )  # fmt: skip
                    run = {"server": server, "task": task, "concurrency": concurrency}
                    run |= {"round": round_ + 1, **serving.summary(report)}
                    runs.append(run)
                    print(
                        f"  {server:<10} {task:<12} c={concurrency:<3} "
                        f"{run['tokens_per_second']:>8,.0f} tokens/s  itl p50 "
                        f"{run['itl_p50_ms']:6.2f} ms  ttft p50 {run['ttft_p50_ms']:7.2f} ms  "
                        f"errors {run['failed_with_warmup']}",
                        flush=True,
                    )
    return runs


def run(ctx: Context) -> Result:
    models = bench_models(ctx)
    tasks = ("autocomplete",) if ctx.quick else ("autocomplete", "translation")
    title = "Peer: Recur vs the same ONNX graphs on Ray Serve (gRPC ingress, @serve.batch)"
    if (missing := ray_serve_missing()) is not None:
        return Result("peer", title, status="skipped", reason=missing)
    batches = concurrent_batches()
    with serving.served(models) as server, ray_peer(models, batches) as peer_target:
        servers = {"recur": server.target, "ray_serve": peer_target}
        same_before, problems = serving.compare_answers(servers, tasks, "before the loads")
        runs = measure(ctx, servers, tasks)
        same_after, later = serving.compare_answers(servers, tasks, "after the loads")
    problems += later + serving.run_errors(runs, "server", "task", "concurrency", "round")
    profiles = {} if ctx.quick else {"on": batching.profiled(ctx, models, "on", concurrency=1)}
    rows = serving.medians(runs, ("server", "task", "concurrency"))
    same = {t: same_before[t] and same_after[t] for t in tasks}
    result = Result(
        scenario="peer",
        title=title,
        settings=settings(ctx, tasks, batches),
        rows=rows,
        targets=[t for task in tasks for t in targets(runs, rows, task)],
        extra={"same_tokens": same, "problems": problems, "profiles": profiles, "runs": runs},
        notes=[f"Recur and Ray Serve streamed the same tokens for every payload, one at a time "
               f"and all at once, before and after the loads: {same}"],
    )  # fmt: skip
    result.fail_targets(problems)
    for line in problems:
        print(f"  does not count: {line}", flush=True)
    return result


def targets(runs: list[dict[str, Any]], rows: list[dict[str, Any]], task: str) -> list[Target]:
    at = {(r["server"], r["concurrency"]): r for r in rows if r["task"] == task}
    fast = at[("recur", 64)]["tokens_per_second"]
    slow = at[("ray_serve", 64)]["tokens_per_second"]
    mine, theirs = at[("recur", 1)]["itl_p50_ms"], at[("ray_serve", 1)]["itl_p50_ms"]
    pair = {"by": "server", "top": "recur", "bottom": "ray_serve", "task": task}
    return [
        Target(
            f"{task}: Recur / Ray Serve tokens/s at concurrency 64", f">= {TARGET_THROUGHPUT:g}x",
            serving.paired_ratio(runs, "tokens_per_second", concurrency=64, **pair),
            TARGET_THROUGHPUT,
            detail=f"median of paired rounds; medians Recur {fast:,.0f} vs Ray Serve {slow:,.0f} "
            "tokens/s",
        ),
        Target(
            f"{task}: Recur / Ray Serve p50 inter-token latency at c=1",
            f"<= {TARGET_LATENCY:g}x",
            serving.paired_ratio(runs, "itl_p50_ms", concurrency=1, **pair), TARGET_LATENCY,
            higher_is_better=False,
            detail=f"median of paired rounds; medians Recur {mine:.3f} ms vs Ray Serve "
            f"{theirs:.3f} ms (the gap between messages that carry tokens, as vLLM's benchmark "
            "counts; time per output token in the table's TPOT column)",
        ),
    ]  # fmt: skip


def settings(ctx: Context, tasks: tuple[str, ...], batches: int) -> dict[str, Any]:
    from scripts.bench import peer

    return {
        "levels": list(LEVELS),
        "tasks": list(tasks),
        "seconds": ctx.seconds(8.0, 3.0),
        "rounds": ROUNDS,
        "order": "both servers up; Recur first in odd rounds, Ray Serve first in even ones",
        "recur_flags": list(serving.DEFAULT_FLAGS),
        "recur_executor_workers": serving.flag_default("--executor-workers"),
        "ray": {
            "num_cpus": 2,
            "include_dashboard": False,
            "replicas": 1,
            "replica_num_cpus": 1,
            "max_batch_size": peer.MAX_BATCH_SIZE,
            "max_concurrent_batches": batches,
            "batch_wait_timeout_s": peer.BATCH_WAIT_TIMEOUT_S,
            "max_ongoing_requests": peer.MAX_ONGOING_REQUESTS,
            "ort_intra_op_threads": 1,
            "worker_niceness": 0,
        },
    }


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    lines = table(
        data["rows"],
        [("server", "server"), ("task", "task"), ("concurrency", "concurrency"),
         ("tokens_per_second", "tokens/s"), ("ttft_p50_ms", "TTFT p50 ms"),
         ("ttft_p99_ms", "TTFT p99 ms"), ("itl_p50_ms", "ITL p50 ms"),
         ("itl_p99_ms", "ITL p99 ms"), ("tpot_p50_ms", "TPOT p50 ms"),
         ("generator_cpu_utilization", "generator CPU")],
    )  # fmt: skip
    return lines + batching.render_profiles(data)


def plot(data: dict[str, Any], plt: Any) -> Any:
    tasks = list(dict.fromkeys(r["task"] for r in data["rows"]))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.35
    for offset, server in enumerate(("recur", "ray_serve")):
        rows = {(r["task"], r["concurrency"]): r for r in data["rows"] if r["server"] == server}
        xs = [i + offset * width for i in range(len(tasks))]
        axes[0].bar(xs, [rows[(t, 64)]["tokens_per_second"] for t in tasks], width, label=server)
        axes[1].bar(xs, [rows[(t, 1)]["itl_p50_ms"] for t in tasks], width, label=server)
    for axis, title, label in (
        (axes[0], "tokens/s at concurrency 64 (higher is better)", "tokens/s"),
        (axes[1], "p50 inter-token latency at concurrency 1 (lower)", "ms"),
    ):
        axis.set_xticks([i + width / 2 for i in range(len(tasks))])
        axis.set_xticklabels(tasks)
        axis.set(title=title, ylabel=label)
        axis.legend()
    return figure
