"""Scenario 6, training throughput: the plain PyTorch loop against Ray Train as it really runs.

The same model (the autocomplete language model at the benchmark's serving size: GRU, embedding
64, hidden 256), the same data (the first N queries of the embedded corpus), the same seed,
batch 64 per worker, the same `trainer.loop.train_loop`, run the two ways `recur-train` runs it:

- `--workers 0` (the plain loop): in-process, identity wrappers, and trainer/cli.py's report
  (`save_each_epoch`: it prints and writes the checkpoint of every epoch);
- `--workers 2` (Ray Train): `TorchTrainer` with trainer/ray_job.py's scaling (2 workers of
  one CPU, one intra-op thread each) and wrappers (`prepare_model`: DDP over gloo;
  `prepare_data_loader` keeping the loop's own sampler), and its report: `ray.train.report` on
  every rank with rank 0's checkpoint of every epoch, kept as ray_job's `CheckpointConfig` says.

- DDP without Ray (shown apart, not in the target): the same 2 processes of one thread,
  `torch.multiprocessing` and gloo, rank 0 checkpointing as the plain loop does; it splits the
  overhead into DDP's share (all-reducing the gradients, waiting for the slower rank) and what
  Ray's runtime adds.

The target compares Ray with perfect data parallelism of the plain loop on the same cores:
overhead = 1 - Ray's tokens/s / (2 x the plain loop's on one thread), one thread being what each
Ray worker gets (one CPU, `OMP_NUM_THREADS=1`). What it leaves out is then what Ray Train, DDP's
all-reduce, the reports and the checkpoints cost. The plain loop on torch's default threads (as
`recur-train --workers 0` runs: one per core) is measured once more at the end, shown apart: on
a loaded 2-core machine its two intra-op threads can be far slower than one.
tokens/s = the epoch's tokens (every worker's shard together) / the seconds between the first
and the last epoch's report returning (epoch 1 warms up and is not counted; validation on 64
examples and each epoch's checkpoint are). The plain loop runs in a fresh process, as a Ray
worker does, while Ray is down, before and after each Ray session; each Ray run is compared
with the mean of the plain runs around it (the full run has two such runs, the target is their
median). A run that fails, or that did not checkpoint every epoch, fails the target. Ray's
start-up (`ray.init`, and each `fit` from call to return: worker group, data, training) is
reported apart.
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
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from scripts.bench.common import ROOT, Context, Result, Target, free_port, ray_env

TARGET_OVERHEAD = 0.10
WORKERS = 2
SETTINGS = {"task": "autocomplete", "cell": "gru", "embed_dim": 64, "hidden_size": 256}
Report = Callable[[dict[str, float], Any], None]
PLAIN = "plain loop, 1 thread"
PLAIN_DEFAULT = "plain loop, torch's threads"
DDP = f"DDP without Ray, {WORKERS} processes"


def config(ctx: Context, workers: int) -> Any:
    from trainer.config import resolve

    examples, epochs = (1536, 2) if ctx.quick else (4096, 3)
    flags = {**SETTINGS, "workers": workers, "epochs": epochs, "max_train_examples": examples}
    flags |= {"max_valid_examples": 64, "eval_completions": 0, "diagnose_every": 0}
    flags |= {"log_every": 10**6, "batch_size": 64, "seed": 0}
    return resolve(flags, environ={})


def measure_loop(task: Any, data: Any, cfg: Any, report: Report, **wrappers: Any) -> dict[str, Any]:
    """Run `train_loop` with `report` (the mode's own); seconds from the first epoch's report
    returning to the last one's, and the checkpoints this rank handed to its report."""
    import torch

    from trainer.loop import train_loop

    marks: list[float] = []
    checkpoints = 0

    def timed(metrics: dict[str, float], checkpoint: Any) -> None:
        nonlocal checkpoints
        report(metrics, checkpoint)
        if "batch" not in metrics:  # an epoch's end (not a checkpoint inside one)
            marks.append(time.perf_counter())
            checkpoints += checkpoint is not None

    result = train_loop(task, data, cfg, report=timed, **wrappers)
    return {
        "measured_seconds": marks[-1] - marks[0],
        "measured_epochs": len(marks) - 1,
        "epochs": len(marks),
        "checkpoints": checkpoints,
        "final_metric": float(result.metrics.get(task.monitor, math.nan)),
        "torch_threads": torch.get_num_threads(),
    }


def _ray_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker as trainer/ray_job.py's `_train_worker` runs (no resume), timed like
    the plain run; rank 0 writes its timing to `config["out"]` (a local cluster: this machine)."""
    import ray.train
    import ray.train.torch

    from trainer import ray_job
    from trainer.config import TrainConfig
    from trainer.tasks import get_task

    cfg = TrainConfig(**config["cfg"])
    task = get_task(cfg.task)
    data = task.prepare(cfg, tokenizer_json=config["tokenizer"])
    context = ray.train.get_context()
    timing = measure_loop(
        task, data, cfg, partial(ray_job._report, monitor=task.monitor, mode=task.mode),
        wrap_model=ray.train.torch.prepare_model,
        wrap_loader=partial(ray.train.torch.prepare_data_loader, add_dist_sampler=False),
        rank=context.get_world_rank(), world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
    )  # fmt: skip
    if context.get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps(timing))


def plain(quick: bool, threads: int = 1) -> dict[str, Any]:
    """The plain loop (`recur-train --workers 0`), in this process, on `threads` intra-op threads
    (0: torch's default), writing its checkpoint every epoch as trainer/cli.py does."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return _timed_run(quick, 0)


def _timed_run(quick: bool, workers: int, **loop: Any) -> dict[str, Any]:
    """`measure_loop` on the scenario's configuration for `workers` workers (0: the plain loop;
    `loop`: `train_loop`'s DDP arguments), rank 0 writing its checkpoint every epoch as
    trainer/cli.py does; its timing and the tokens of an epoch."""
    from trainer.cli import save_each_epoch
    from trainer.tasks import get_task

    cfg = config(Context(out=Path("."), quick=quick), workers)
    task = get_task(cfg.task)
    data = task.prepare(cfg)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        save: Report = partial(save_each_epoch, Path(tmp) / "last.pt")
        report = save if loop.get("rank", 0) == 0 else _no_report
        timing = measure_loop(task, data, cfg, report, **loop)
    return timing | {"tokens_per_epoch": sum(len(x) for x in data.train)}


def _no_report(_metrics: dict[str, float], _checkpoint: Any) -> None:
    """What a rank other than 0 does with an epoch's report (only rank 0 checkpoints)."""


def run_plain(ctx: Context, threads: int = 1) -> dict[str, Any]:
    """The plain loop in a fresh process, as fresh as a Ray worker's (stdout: its JSON)."""
    command = [sys.executable, "-m", "scripts.bench.training", "--plain", f"--threads={threads}"]
    command += ["--quick"] if ctx.quick else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    timing: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return timing


def ddp(quick: bool, out: Path) -> None:
    """The loop under plain DDP, no Ray: `WORKERS` processes of one thread over gloo, rank 0
    checkpointing every epoch as the plain loop does; rank 0 writes its timing to `out`."""
    import torch.multiprocessing

    torch.multiprocessing.spawn(_ddp_worker, args=(free_port(), quick, str(out)), nprocs=WORKERS)


def _ddp_worker(rank: int, port: int, quick: bool, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORKERS)
    try:
        timing = _timed_run(quick, WORKERS, wrap_model=DistributedDataParallel, rank=rank,
                            world_size=WORKERS)  # fmt: skip
        if rank == 0:
            Path(out).write_text(json.dumps(timing))
        # Both done with the group before either tears gloo down, and no interpreter teardown
        # after it: either now and then aborted a rank at exit (tests/trainer/test_ddp.py's
        # `finish`).
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ddp(ctx: Context) -> dict[str, Any]:
    """`ddp` in fresh processes (Ray down), as fresh as Ray's workers."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timing.json"
        command = [sys.executable, "-m", "scripts.bench.training", "--ddp", f"--out={out}"]
        command += ["--quick"] if ctx.quick else []
        subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
        timing: dict[str, Any] = json.loads(out.read_text())
    return timing


def run_ray(ctx: Context, workers: int) -> dict[str, Any]:
    """One `TorchTrainer.fit` on the running Ray cluster, configured as trainer/ray_job.py
    configures it; the timing rank 0 wrote, and the checkpoints Ray kept."""
    from ray.train import CheckpointConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from trainer import ray_job
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
            scaling_config=ray_job.scaling_config(cfg),
            run_config=RunConfig(
                storage_path=storage, name=f"bench-{workers}",
                checkpoint_config=CheckpointConfig(
                    num_to_keep=cfg.keep_checkpoints or None,
                    checkpoint_score_attribute=ray_job.SCORE, checkpoint_score_order="max",
                ),
            ),
        )  # fmt: skip
        result = trainer.fit()
        timing: dict[str, Any] = json.loads(out.read_text())
        timing["checkpoints_kept"] = len(result.best_checkpoints or [])
    timing["fit_seconds"] = time.perf_counter() - started
    return timing | {"tokens_per_epoch": sum(len(x) for x in data.train)}


@contextlib.contextmanager
def ray_cluster() -> Iterator[float]:
    """A local Ray instance of 2 CPUs without the dashboard; yields its start-up seconds."""
    import ray

    started = time.perf_counter()
    os.environ.update(ray_env())  # read by the raylet that ray.init starts (worker niceness)
    ray.init(
        num_cpus=WORKERS, include_dashboard=False, logging_level=logging.WARNING,
        log_to_driver=False,
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


def problems_of(mode: str, timing: dict[str, Any]) -> list[str]:
    """What makes a run not count: an epoch without its checkpoint, a loss that is not finite."""
    found = []
    if timing["checkpoints"] != timing["epochs"]:
        found.append(f"{mode}: {timing['checkpoints']} checkpoints in {timing['epochs']} epochs")
    if "checkpoints_kept" in timing and timing["checkpoints_kept"] != timing["epochs"]:
        found.append(f"{mode}: Ray kept {timing['checkpoints_kept']} checkpoints, not one an epoch")
    if not math.isfinite(timing["final_metric"]):
        found.append(f"{mode}: the last validation is {timing['final_metric']}")
    return found


def run(ctx: Context) -> Result:
    ray_mode = f"Ray Train, {WORKERS} workers"
    timings = [(PLAIN, run_plain(ctx))]
    rows = [_row(*timings[0])]
    ray_starts = []
    # Ray is down while the plain loop runs (an idle Ray would slow it, flattering Ray).
    for _ in range(1 if ctx.quick else 2):
        with ray_cluster() as started:
            ray_starts.append(started)
            timings.append((ray_mode, run_ray(ctx, WORKERS)))
            rows.append(_row(*timings[-1]))
        timings.append((PLAIN, run_plain(ctx)))
        rows.append(_row(*timings[-1]))
    timings.append((DDP, run_ddp(ctx)))
    rows.append(_row(*timings[-1]))
    rows.append(_row(PLAIN_DEFAULT, run_plain(ctx, threads=0)))
    problems = [line for mode, timing in timings for line in problems_of(mode, timing)]
    overheads = []
    for index, row in enumerate(rows):
        if row["mode"] == ray_mode:  # against the plain runs just before and after
            around = (
                rows[index - 1]["tokens_per_second"] + rows[index + 1]["tokens_per_second"]
            ) / 2
            overheads.append(1 - row["tokens_per_second"] / (WORKERS * around))
    plain = statistics.median(r["tokens_per_second"] for r in rows if r["mode"] == PLAIN)
    ray = statistics.median(r["tokens_per_second"] for r in rows if r["mode"] == ray_mode)
    default = rows[-1]["tokens_per_second"]
    alone = next(r["tokens_per_second"] for r in rows if r["mode"] == DDP)
    split = (f"; DDP without Ray {alone:,.0f} tokens/s: DDP's share 1 - ddp / ({WORKERS} x "
             f"plain) = {1 - alone / (WORKERS * plain):.1%}, Ray's runtime 1 - ray / ddp = "
             f"{1 - ray / alone:.1%}")  # fmt: skip
    target = Target(
        f"Ray Train ({WORKERS} workers, DDP, a checkpoint every epoch) overhead vs {WORKERS} x "
        "the plain loop on 1 thread",
        f"<= {TARGET_OVERHEAD:.0%}", statistics.median(overheads), TARGET_OVERHEAD,
        higher_is_better=False, unit="%",
        detail=f"1 - ray / ({WORKERS} x plain), each Ray run against the mean of the plain runs "
        f"around it ({', '.join(f'{o:.1%}' for o in overheads)}); medians plain {plain:,.0f} "
        f"(1 thread), Ray {ray:,.0f} tokens/s; the plain loop on torch's default "
        f"{rows[-1]['torch_threads']} threads: {default:,.0f} tokens/s{split}",
    )  # fmt: skip
    cfg = config(ctx, 0)
    result = Result(
        scenario="training",
        title=f"Training throughput: plain PyTorch loop vs Ray Train with {WORKERS} workers",
        settings={
            **SETTINGS,
            "examples": cfg.max_train_examples,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "batch_size_per_worker": cfg.batch_size,
            "ray_workers": WORKERS,
            "torch_threads_per_worker": 1,
            "plain_torch_threads": "1 (the target), then torch's default once",
            "ray_num_cpus": WORKERS,
            "ray_worker_niceness": 0,
            "checkpoints": "every epoch, both ways (plain: save_each_epoch; Ray: ray.train.report)",
        },
        rows=rows,
        targets=[target],
        extra={"plain_tokens_per_second": plain, "ray_init_seconds": ray_starts,
               "ddp_without_ray_tokens_per_second": alone,
               "plain_default_threads_tokens_per_second": default,
               "problems": problems},
    )  # fmt: skip
    result.fail_targets(problems)
    for line in problems:
        print(f"  does not count: {line}", flush=True)
    return result


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    return table(
        data["rows"],
        [("mode", "mode"), ("tokens_per_second", "tokens/s"),
         ("measured_seconds", "seconds measured"), ("measured_epochs", "epochs measured"),
         ("torch_threads", "torch threads"), ("checkpoints", "checkpoints"),
         ("final_metric", "last validation"), ("fit_seconds", "TorchTrainer.fit s")],
    )  # fmt: skip


def plot(data: dict[str, Any], plt: Any) -> Any:
    figure, axis = plt.subplots(figsize=(7, 4))
    labels = [f"{i}. {r['mode']}" for i, r in enumerate(data["rows"], 1)]  # in the order run
    axis.barh(labels, [r["tokens_per_second"] for r in data["rows"]])
    ideal = WORKERS * data["plain_tokens_per_second"]
    axis.axvline(ideal, color="gray", linestyle=":", label=f"{WORKERS} x plain (1 thread)")
    axis.axvline(ideal * (1 - TARGET_OVERHEAD), color="red", linestyle="--",
                 label=f"{WORKERS} x plain - {TARGET_OVERHEAD:.0%}")  # fmt: skip
    axis.set(xlabel="training tokens/s", title="Training throughput, in the order run")
    axis.invert_yaxis()
    axis.legend()
    return figure


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one timed run of the training loop")
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument("--plain", action="store_true", help="in this process; JSON on stdout")
    way.add_argument("--ddp", action="store_true", help=f"DDP, {WORKERS} processes, no Ray")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: its default)")
    parser.add_argument("--out", type=Path, help="--ddp: where rank 0 writes its JSON")
    args = parser.parse_args()
    if args.ddp:
        if args.out is None:
            parser.error("--ddp needs --out")
        ddp(args.quick, args.out)
    else:
        print(json.dumps(plain(args.quick, args.threads)), flush=True)
