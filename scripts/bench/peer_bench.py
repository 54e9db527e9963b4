"""Scenario 3, the peer: Recur against the same graphs served with Ray Serve (`peer.py`).

Both run at once (Ray with `num_cpus=2`, no dashboard; an idle Ray takes more CPU than an idle
Recur, so this leans against Recur) and each round loads Recur then Ray Serve with the same load
generator at concurrency 1 and 64 (two rounds in the full run; the targets are medians of the
paired ratios). Before measuring, both are asked for the same completions and translations,
which must match token for token (greedy decoding of the same graphs). A py-spy profile of Recur
at concurrency 1 says where its inter-token latency goes. Targets: Recur >= 3x Ray Serve's
tokens/s at concurrency 64, and <= 0.5x its p50 inter-token latency at concurrency 1.
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
from scripts.bench.common import Context, Result, Target, free_port, ray_env
from scripts.bench.models import bench_models, bundle_for

LEVELS = (1, 64)
TARGET_THROUGHPUT = 3.0
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
def ray_peer(models: Path) -> Iterator[str]:
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
            str(bundle_for(models, "autocomplete")), str(bundle_for(models, "translation"))
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
            asyncio.run(_answers(target, ("ready",), "autocomplete"))
            return
        except RecurError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


async def _answers(target: str, texts: tuple[str, ...], task: str) -> list[list[int]]:
    """The token ids each text is answered with (greedy, default limits)."""
    found = []
    async with RecurClient(target, timeout=60.0, retry=NO_RETRIES) as client:
        for text in texts:
            if task == "translation":
                events = client.translate(text)
            else:
                events = client.complete(text, max_tokens=serving.MAX_TOKENS)
            found.append([e.token.id async for e in events if e.HasField("token")])
    return found


def measure(ctx: Context, servers: dict[str, str], tasks: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each level, Recur then Ray Serve in every round; one row per run."""
    runs = []
    for task in tasks:
        for concurrency in LEVELS:
            for round_ in range(1 if ctx.quick else 2):
                for server, target in servers.items():
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
                        f"errors {sum(run['errors'].values())}",
                        flush=True,
                    )
    return runs


def run(ctx: Context) -> Result:
    models = bench_models(ctx)
    tasks = ("autocomplete",) if ctx.quick else ("autocomplete", "translation")
    title = "Peer: Recur vs the same ONNX graphs on Ray Serve (gRPC ingress, @serve.batch)"
    if (missing := ray_serve_missing()) is not None:
        return Result("peer", title, status="skipped", reason=missing)
    answers: dict[str, dict[str, list[list[int]]]] = {}
    with serving.served(models) as server, ray_peer(models) as peer_target:
        servers = {"recur": server.target, "ray_serve": peer_target}
        for name, target in servers.items():
            answers[name] = {t: asyncio.run(_answers(target, serving.payloads(t), t))
                             for t in tasks}  # fmt: skip
        runs = measure(ctx, servers, tasks)
    profiles = {} if ctx.quick else {"on": batching.profiled(ctx, models, "on", concurrency=1)}
    rows = serving.medians(runs, ("server", "task", "concurrency"))
    same = {t: answers["recur"][t] == answers["ray_serve"][t] for t in tasks}
    targets = []
    for task in tasks:
        at = {(r["server"], r["concurrency"]): r for r in rows if r["task"] == task}
        fast = at[("recur", 64)]["tokens_per_second"]
        slow = at[("ray_serve", 64)]["tokens_per_second"]
        mine, theirs = at[("recur", 1)]["itl_p50_ms"], at[("ray_serve", 1)]["itl_p50_ms"]
        pair = {"by": "server", "top": "recur", "bottom": "ray_serve", "task": task}
        targets.append(Target(
            f"{task}: Recur / Ray Serve tokens/s at concurrency 64", f">= {TARGET_THROUGHPUT:g}x",
            serving.paired_ratio(runs, "tokens_per_second", concurrency=64, **pair),
            TARGET_THROUGHPUT,
            detail=f"median of paired rounds; medians Recur {fast:,.0f} vs Ray Serve {slow:,.0f} "
            "tokens/s",
        ))  # fmt: skip
        targets.append(Target(
            f"{task}: Recur / Ray Serve p50 inter-token latency at c=1",
            f"<= {TARGET_LATENCY:g}x",
            serving.paired_ratio(runs, "itl_p50_ms", concurrency=1, **pair), TARGET_LATENCY,
            higher_is_better=False,
            detail=f"median of paired rounds; medians Recur {mine:.3f} ms vs Ray Serve "
            f"{theirs:.3f} ms",
        ))  # fmt: skip
    from scripts.bench import peer

    return Result(
        scenario="peer",
        title=title,
        settings={
            "levels": list(LEVELS),
            "tasks": list(tasks),
            "seconds": ctx.seconds(8.0, 3.0),
            "rounds": 1 if ctx.quick else 2,
            "order": "both servers up; in each round Recur, then Ray Serve",
            "recur_flags": list(serving.DEFAULT_FLAGS),
            "ray": {
                "num_cpus": 2,
                "include_dashboard": False,
                "replicas": 1,
                "replica_num_cpus": 1,
                "max_batch_size": peer.MAX_BATCH_SIZE,
                "batch_wait_timeout_s": peer.BATCH_WAIT_TIMEOUT_S,
                "max_ongoing_requests": peer.MAX_ONGOING_REQUESTS,
                "ort_intra_op_threads": 1,
                "worker_niceness": 0,
            },
        },
        rows=rows,
        targets=targets,
        extra={"same_tokens": same, "profiles": profiles, "runs": runs},
        notes=[f"Recur and Ray Serve streamed the same tokens: {same}"],
    )


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    lines = table(
        data["rows"],
        [("server", "server"), ("task", "task"), ("concurrency", "concurrency"),
         ("tokens_per_second", "tokens/s"), ("ttft_p50_ms", "TTFT p50 ms"),
         ("ttft_p99_ms", "TTFT p99 ms"), ("itl_p50_ms", "ITL p50 ms"),
         ("itl_p99_ms", "ITL p99 ms"), ("generator_cpu_utilization", "generator CPU")],
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
