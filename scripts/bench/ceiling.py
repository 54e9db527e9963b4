"""Scenario 1, the ceiling: raw ONNX Runtime step throughput of the served graphs, no gRPC.

For the autocomplete `lm_step` (one token) and the translation `decoder_step` (one token,
attending over 10 source tokens), the graph file the server serves (the ORT-optimized copy) runs
at batch 1, 8, 64 and 256 with the recurrent state fed in and read out, three ways:

- `1 thread`: one caller, `intra_op_num_threads=1` (what one server executor thread does);
- `2 threads`: one caller, `intra_op_num_threads=2` (ORT splits each call over both cores);
- `2 callers`: two threads calling one 1-thread session at once, `batch/2` rows each
  (what the server's two executor threads do at best).

tokens/s = rows per call / seconds per call; the ceiling at a batch size is the best of the
three. Then the gRPC transport's own ceiling: a bare `grpc.aio` server that streams pre-built
completion messages (no model, no engine), driven by the same load generator as the server.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from scripts.bench import serving
from scripts.bench.common import ROOT, Context, Result, free_port, median, timed_for
from scripts.bench.models import bench_models, bundle_for, manifest

BATCHES = (1, 8, 64, 256)
SOURCE_LENGTH = 10
GRAPHS = {"autocomplete": "lm_step", "translation": "decoder_step"}
VARIANTS = ("1 thread", "2 threads", "2 callers")


def graph_spec(bundle: Path, role: str) -> tuple[Path, dict[str, Any], int]:
    """The served file of graph `role`, its manifest entry and the vocabulary size."""
    data = manifest(bundle)
    spec = next(g for g in data["graphs"] if g["role"] == role)
    file = spec.get("optimized_file") or spec["file"]
    return bundle / file, spec, int(data["sizes"]["vocab_size"])


def feeds(spec: dict[str, Any], batch: int, vocab: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one step of `batch` rows: tokens, state, source memory and mask."""
    rng = np.random.default_rng(seed)
    sizes = {"batch": batch, "source": SOURCE_LENGTH, "time": 1}
    arrays: dict[str, np.ndarray] = {}
    for tensor in spec["inputs"]:
        shape = [sizes[d] if d in sizes else int(d) for d in tensor["shape"]]
        if tensor["dtype"] == "int64":
            arrays[tensor["name"]] = rng.integers(4, vocab, size=shape, dtype=np.int64)
        elif tensor["dtype"] == "bool":
            arrays[tensor["name"]] = np.ones(shape, dtype=bool)
        else:
            arrays[tensor["name"]] = rng.standard_normal(shape).astype(np.float32) * 0.1
    return arrays


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def throughput(path: Path, spec: dict[str, Any], vocab: int, batch: int, *, variant: str,
               seconds: float) -> dict[str, float]:  # fmt: skip
    """Rows per second of `variant` at `batch` rows in flight, and the median call time."""
    if variant == "2 callers" and batch > 1:
        sess = session(path, 1)
        parts = [feeds(spec, batch // 2, vocab, seed=i) for i in range(2)]
        for part in parts:
            timed_for(lambda p=part: sess.run(None, p), 0.05)  # type: ignore[misc]
        times: list[list[float]] = [[], []]

        def caller(i: int) -> None:
            times[i] = timed_for(lambda: sess.run(None, parts[i]), seconds)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        rows = sum(len(t) for t in times) * (batch // 2)
        return {"tokens_per_second": rows / wall, "step_ms": median(times[0] + times[1]) * 1e3}
    sess = session(path, 2 if variant == "2 threads" else 1)
    inputs = feeds(spec, batch, vocab)
    timed_for(lambda: sess.run(None, inputs), 0.1)
    step = median(timed_for(lambda: sess.run(None, inputs), seconds))
    return {"tokens_per_second": batch / step, "step_ms": step * 1e3}


def ceiling_rows(
    models: Path, task: str, batches: tuple[int, ...], seconds: float
) -> list[dict[str, Any]]:
    """Every variant at every batch size for the task's decoding graph, plus the best."""
    role = GRAPHS[task]
    path, spec, vocab = graph_spec(bundle_for(models, task), role)
    rows = []
    for batch in batches:
        measured = {
            v: throughput(path, spec, vocab, batch, variant=v, seconds=seconds)
            for v in VARIANTS
            if not (v == "2 callers" and batch == 1)
        }
        best = max(measured, key=lambda v: measured[v]["tokens_per_second"])
        row: dict[str, Any] = {"task": task, "graph": role, "file": path.name, "batch": batch}
        for variant, m in measured.items():
            key = variant.replace(" ", "_")
            row[f"{key}_tokens_per_second"] = m["tokens_per_second"]
            row[f"{key}_step_ms"] = m["step_ms"]
        row["ceiling_tokens_per_second"] = measured[best]["tokens_per_second"]
        row["best"] = best
        rows.append(row)
        print(
            f"  ceiling {role:<13} batch {batch:>4}: "
            + "  ".join(f"{v} {m['tokens_per_second']:>9,.0f}" for v, m in measured.items())
            + " tokens/s",
            flush=True,
        )
    return rows


@contextmanager
def echo_server(*, packed: bool = False) -> Iterator[str]:
    """The bare gRPC transport: `scripts/bench/echo_server.py` on a free port (`packed`: every
    token after the first in one message)."""
    port = free_port()
    command = [sys.executable, "-m", "scripts.bench.echo_server", "--port", str(port)]
    command += ["--packed"] if packed else []
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        if "ready" not in process.stdout.readline():
            raise RuntimeError("the echo server did not start")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


TRANSPORTS = {"one token per message": False, "packed": True}  # name -> echo_server(packed=)


def transport_rows(
    ctx: Context, concurrencies: tuple[int, ...], *, packings: tuple[str, ...] = tuple(TRANSPORTS)
) -> list[dict[str, Any]]:
    """The bare echo server under the load generator, one row per packing and concurrency."""
    rows = []
    for packing in packings:
        with echo_server(packed=TRANSPORTS[packing]) as target:
            for concurrency in concurrencies:
                report = serving.load(
                    target, "autocomplete", concurrency=concurrency,
                    duration=ctx.seconds(5.0, 2.0), warmup=ctx.warmup(),
                )  # fmt: skip
                row = {"transport": "grpc.aio echo", "messages": packing}
                row |= {"concurrency": concurrency} | serving.summary(report)
                rows.append(row)
                print(
                    f"  transport, {packing}, c={concurrency:<4} {row['tokens_per_second']:>9,.0f}"
                    f" tokens/s itl p50 {row['itl_p50_ms']:.3f} ms",
                    flush=True,
                )
    return rows


def run(ctx: Context) -> Result:
    models = bench_models(ctx)
    seconds = 0.3 if ctx.quick else 1.5
    rows: list[dict[str, Any]] = []
    for task in GRAPHS:
        rows += ceiling_rows(models, task, BATCHES, seconds)
    transport = transport_rows(ctx, (1, 64))
    return Result(
        scenario="ceiling",
        title="Ceiling: raw ONNX Runtime step throughput (no gRPC) and the bare gRPC transport",
        settings={
            "batches": list(BATCHES),
            "variants": list(VARIANTS),
            "seconds_per_point": seconds,
            "source_length": SOURCE_LENGTH,
            "graphs": GRAPHS,
            "transport_max_tokens": serving.MAX_TOKENS,
        },
        rows=rows,
        extra={"transport": transport},
        notes=[
            "tokens/s = rows per call / seconds per call; the ceiling is the best variant",
            "the transport rows stream pre-built messages from a bare grpc.aio server: the most "
            "tokens/s any Python gRPC server can stream on this machine with this generator, "
            "one token per message, or with the first token alone and the other "
            f"{serving.MAX_TOKENS - 1} in one message (packed: the best any packing can do)",
        ],
    )


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    columns = [("graph", "graph"), ("batch", "batch")]
    columns += [(f"{v.replace(' ', '_')}_tokens_per_second", f"{v} tok/s") for v in VARIANTS]
    columns += [("ceiling_tokens_per_second", "ceiling tok/s"), ("1_thread_step_ms", "step ms")]
    lines = table(data["rows"], columns)
    lines += ["", "The gRPC transport alone (pre-built messages, same load generator):", ""]
    lines += table(
        data.get("transport", []),
        [("messages", "messages"), ("concurrency", "concurrency"),
         ("tokens_per_second", "tokens/s"),
         ("itl_p50_ms", "ITL p50 ms"), ("itl_p99_ms", "ITL p99 ms"),
         ("generator_cpu_utilization", "generator CPU")],
    )  # fmt: skip
    return lines


def plot(data: dict[str, Any], plt: Any) -> Any:
    graphs = list(dict.fromkeys(r["graph"] for r in data["rows"]))
    figure, axes = plt.subplots(1, len(graphs), figsize=(6 * len(graphs), 4.5), squeeze=False)
    for axis, graph in zip(axes[0], graphs, strict=True):
        rows = [r for r in data["rows"] if r["graph"] == graph]
        for variant in VARIANTS:
            key = f"{variant.replace(' ', '_')}_tokens_per_second"
            points = [(r["batch"], r[key]) for r in rows if key in r]
            axis.plot(*zip(*points, strict=True), marker="o", label=f"ORT {variant}")
        for t in data.get("transport", []):
            axis.axhline(t["tokens_per_second"], linestyle="--", color="gray")
            label = f"gRPC echo, {t.get('messages', 'one token per message')}, c={t['concurrency']}"
            axis.annotate(label, (1, t["tokens_per_second"]), fontsize=8, color="gray")
        axis.set(xscale="log", yscale="log", xlabel="batch (rows per step)", ylabel="tokens/s",
                 title=f"{graph}: raw ONNX Runtime step throughput")  # fmt: skip
        axis.legend(fontsize=8)
    return figure
