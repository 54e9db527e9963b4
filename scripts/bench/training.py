"""Scenario 6, training throughput: the plain PyTorch loop vs Ray Train with 1 and 2 workers.

The same model (the autocomplete language model at the benchmark's serving size: GRU, embedding
64, hidden 256), the same data (the first N queries of the embedded corpus), batch 64 per
worker, the same `trainer.loop.train_loop`. The plain loop gets identity wrappers; under Ray
Train's `TorchTrainer` it gets `prepare_model` (DDP over gloo with 2 workers) and
`prepare_data_loader`, as `trainer/ray_job.py` does. Every worker has one CPU, and Ray gives it
one intra-op thread (`OMP_NUM_THREADS=1`), so the plain loop runs with
`torch.set_num_threads(1)` too: the 1-worker comparison is the same compute budget.

tokens/s = the epoch's tokens (every worker's shard together) / the seconds between the reports
of the first and the last epoch (epoch 1 warms up and is not counted; validation on 64 examples
is). Checkpoints are not written in either mode. The plain loop runs in a fresh process, as a
Ray worker does, while Ray is down, before and after each Ray session; each 1-worker run is
compared with the mean of the plain runs around it (the full run has two such runs, the target
is their median; the quick run has one and no 2-worker run). Ray's start-up (`ray.init`, and
each `fit` from call to return: worker group, data, training) is reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scripts.bench.common import ROOT, Context, Result, Target, ray_env

TARGET_OVERHEAD = 0.10
SETTINGS = {"task": "autocomplete", "cell": "gru", "embed_dim": 64, "hidden_size": 256}


def config(ctx: Context, workers: int) -> Any:
    from trainer.config import resolve

    examples, epochs = (1536, 2) if ctx.quick else (4096, 3)
    flags = {**SETTINGS, "workers": workers, "epochs": epochs, "max_train_examples": examples}
    flags |= {"max_valid_examples": 64, "eval_completions": 0, "diagnose_every": 0}
    flags |= {"log_every": 10**6, "batch_size": 64}
    return resolve(flags, environ={})


def measure_loop(task: Any, data: Any, cfg: Any, **wrappers: Any) -> dict[str, float]:
    """Run `train_loop`; seconds from the first epoch's report to the last one's."""
    import torch

    from trainer.loop import train_loop

    marks: list[float] = []

    def report(metrics: dict[str, float], checkpoint: Any) -> None:
        if "batch" not in metrics:  # an epoch's end (not a checkpoint inside one)
            marks.append(time.perf_counter())

    train_loop(task, data, cfg, report=report, **wrappers)
    return {
        "measured_seconds": marks[-1] - marks[0],
        "measured_epochs": len(marks) - 1,
        "torch_threads": torch.get_num_threads(),
    }


def _ray_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the plain loop with Ray's wrappers, timed like the plain run;
    rank 0 writes its timing to `config["out"]` (the driver's machine: a local cluster)."""
    import ray.train
    import ray.train.torch

    from trainer.config import TrainConfig
    from trainer.tasks import get_task

    cfg = TrainConfig(**config["cfg"])
    task = get_task(cfg.task)
    data = task.prepare(cfg, tokenizer_json=config["tokenizer"])
    context = ray.train.get_context()
    timing = measure_loop(
        task, data, cfg,
        wrap_model=ray.train.torch.prepare_model,
        wrap_loader=ray.train.torch.prepare_data_loader,
        rank=context.get_world_rank(), world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
    )  # fmt: skip
    if context.get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps(timing))


def plain(quick: bool) -> dict[str, Any]:
    """The plain loop, in this process, with one intra-op thread."""
    import torch

    from trainer.tasks import get_task

    torch.set_num_threads(1)
    cfg = config(Context(out=Path("."), quick=quick), 0)
    task = get_task(cfg.task)
    data = task.prepare(cfg)
    return measure_loop(task, data, cfg) | {"tokens_per_epoch": sum(len(x) for x in data.train)}


def run_plain(ctx: Context) -> dict[str, Any]:
    """The plain loop in a fresh process, as fresh as a Ray worker's (last stdout line: JSON)."""
    command = [sys.executable, "-m", "scripts.bench.training", "--plain"]
    command += ["--quick"] if ctx.quick else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    timing: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return timing


def run_ray(ctx: Context, workers: int) -> dict[str, Any]:
    """One `TorchTrainer.fit` on the running Ray cluster; the timing rank 0 wrote."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainer.tasks import get_task

    cfg = config(ctx, workers)
    data = get_task(cfg.task).prepare(cfg)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as storage:
        out = Path(storage) / "timing.json"
        loop_config = {"cfg": cfg.__dict__, "tokenizer": data.tokenizer.to_str()}
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config=loop_config | {"out": str(out)},
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=storage, name=f"bench-{workers}"),
        )
        trainer.fit()
        timing: dict[str, Any] = json.loads(out.read_text())
    timing["fit_seconds"] = time.perf_counter() - started
    return timing | {"tokens_per_epoch": sum(len(x) for x in data.train)}


@contextlib.contextmanager
def ray_cluster() -> Iterator[float]:
    """A local Ray instance of 2 CPUs without the dashboard; yields its start-up seconds."""
    import ray

    started = time.perf_counter()
    os.environ.update(ray_env())  # read by the raylet that ray.init starts (worker niceness)
    ray.init(
        num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
        runtime_env={"env_vars": {**ray_env(), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
    )  # fmt: skip
    try:
        yield time.perf_counter() - started
    finally:
        ray.shutdown()


def _row(mode: str, timing: dict[str, Any]) -> dict[str, Any]:
    seconds = timing["measured_seconds"]
    tokens = timing["tokens_per_epoch"] * timing["measured_epochs"]
    row = {"mode": mode, **timing, "tokens_per_second": tokens / seconds if seconds else math.nan}
    print(f"  {mode:<24} {row['tokens_per_second']:>9,.0f} tokens/s "
          f"({seconds:.1f} s for {timing['measured_epochs']:.0f} epochs)", flush=True)  # fmt: skip
    return row


def run(ctx: Context) -> Result:
    rows = [_row("plain loop", run_plain(ctx))]
    ray_starts = []
    # Ray is down while the plain loop runs (an idle Ray would slow it, flattering Ray).
    for workers in [(1,)] if ctx.quick else [(1, 2), (1,)]:
        with ray_cluster() as started:
            ray_starts.append(started)
            for n in workers:
                rows.append(_row(f"Ray Train, {n} worker{'s' if n > 1 else ''}", run_ray(ctx, n)))
        rows.append(_row("plain loop", run_plain(ctx)))
    overheads, plains = [], []
    for index, row in enumerate(rows):
        if row["mode"] == "plain loop":
            plains.append(row["tokens_per_second"])
        elif row["mode"].endswith(" 1 worker"):  # against the plain runs just before and after
            before = next(r for r in reversed(rows[:index]) if r["mode"] == "plain loop")
            after = next(r for r in rows[index:] if r["mode"] == "plain loop")
            around = (before["tokens_per_second"] + after["tokens_per_second"]) / 2
            overheads.append(1 - row["tokens_per_second"] / around)
    plain = statistics.median(plains)
    one = statistics.median(r["tokens_per_second"] for r in rows if r["mode"].endswith("1 worker"))
    two = next((r["tokens_per_second"] for r in rows if r["mode"].endswith("2 workers")), None)
    scaling = f", 2 workers {two:,.0f}: 2 workers / plain = {two / plain:.2f}x" if two else ""
    target = Target(
        "Ray Train 1-worker overhead vs the plain loop (1 - ray/plain)",
        f"<= {TARGET_OVERHEAD:.0%}", statistics.median(overheads), TARGET_OVERHEAD,
        higher_is_better=False, unit="%",
        detail=f"each 1-worker run against the mean of the plain runs around it "
        f"({', '.join(f'{o:.1%}' for o in overheads)}); medians plain {plain:,.0f}, Ray 1 worker "
        f"{one:,.0f} tokens/s{scaling}",
    )  # fmt: skip
    cfg = config(ctx, 0)
    return Result(
        scenario="training",
        title="Training throughput: plain PyTorch loop vs Ray Train with 1 and 2 workers",
        settings={
            **SETTINGS,
            "examples": cfg.max_train_examples,
            "epochs": cfg.epochs,
            "batch_size_per_worker": cfg.batch_size,
            "torch_threads_per_worker": 1,
            "ray_num_cpus": 2,
            "ray_worker_niceness": 0,
            "checkpoints": "not written",
        },
        rows=rows,
        targets=[target],
        extra={"plain_tokens_per_second": plain, "ray_init_seconds": ray_starts},
    )


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    return table(
        data["rows"],
        [("mode", "mode"), ("tokens_per_second", "tokens/s"),
         ("measured_seconds", "seconds measured"), ("measured_epochs", "epochs measured"),
         ("torch_threads", "torch threads"), ("fit_seconds", "TorchTrainer.fit s")],
    )  # fmt: skip


def plot(data: dict[str, Any], plt: Any) -> Any:
    figure, axis = plt.subplots(figsize=(7, 4))
    labels = [r["mode"] for r in data["rows"]]
    axis.barh(labels, [r["tokens_per_second"] for r in data["rows"]])
    axis.axvline(data["plain_tokens_per_second"] * (1 - TARGET_OVERHEAD), color="red",
                 linestyle="--", label="plain - 10%")  # fmt: skip
    axis.set(xlabel="training tokens/s", title="Training throughput (one thread per worker)")
    axis.invert_yaxis()
    axis.legend()
    return figure


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one timed run of the plain training loop")
    parser.add_argument("--plain", action="store_true", required=True)
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(plain(parser.parse_args().quick)), flush=True)
