"""Data-parallel training on Ray Train: the only module of Recur that imports Ray.

`TorchTrainer` starts `workers` processes, each running the plain training loop with Ray's
wrappers injected: `prepare_model` (DistributedDataParallel over gloo on CPU, NCCL on GPU) and
`prepare_data_loader` (told to keep the loop's own distributed sampler, so each rank trains
on its own shard with the same number of steps, and moves batches to the device). Rank 0 writes
the checkpoint of every epoch and of every `--checkpoint-every-steps` steps; every rank reports
at the same points. Each checkpoint carries what a resumed run needs (model, optimizer,
schedule, counters, data position, per-rank random state), so a relaunch with the same
`--run-name`, or a restart after a worker failure, continues where the latest one was taken
(`trainer.checkpoint.resume`, the same function an in-process run resumes with).

Ray keeps `--keep-checkpoints` of them ranked by `checkpoint_score`: the monitored validation
metric (negated where lower is better) for an epoch's checkpoint, `UNSCORED` for one inside an
epoch, which has not been validated. The latest is always kept, so the best and the latest
survive.
"""

from __future__ import annotations

import logging
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from trainer import checkpoint
from trainer.checkpoint import Checkpoint
from trainer.config import TrainConfig
from trainer.loop import train_loop
from trainer.storage import filesystem_and_path
from trainer.tasks import get_task

SCORE = "checkpoint_score"  # higher is better; what Ray ranks checkpoints by
# Below any metric, and finite: Ray's checkpoint-manager snapshot (JSON in the run's storage)
# writes -inf as null, and a relaunched run could not rank its checkpoints again.
UNSCORED = -1e30


def checkpoint_score(metrics: dict[str, float], *, monitor: str, mode: str) -> float:
    """The monitored metric, negated when lower is better; `UNSCORED` before any validation."""
    if monitor not in metrics:
        return UNSCORED
    return metrics[monitor] if mode == "max" else -metrics[monitor]


def _report(
    metrics: dict[str, float], saved: Checkpoint | None, *, monitor: str, mode: str
) -> None:
    """Every rank reports the same metrics; only rank 0 has a checkpoint to attach."""
    metrics = {**metrics, SCORE: checkpoint_score(metrics, monitor=monitor, mode=mode)}
    if saved is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(saved, Path(tmp) / checkpoint.FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    # `report` has persisted it (Ray Train's own line about it is below the WARNING level
    # this trainer shows).
    at = saved.position
    print(f"[{saved.task}] checkpoint saved: epoch {at.epoch} done, batch {at.batch} of the next",
          flush=True)  # fmt: skip


def resume_from(latest: ray.train.Checkpoint | None, *, rank: int) -> Checkpoint | None:
    """The checkpoint Ray Train hands a relaunched run or a restarted worker group (its latest),
    read by `trainer.checkpoint.resume` as the in-process run reads its `last.pt`."""
    if latest is None:  # a new run
        return None
    with latest.as_directory() as directory:
        return checkpoint.resume(Path(directory) / checkpoint.FILE, rank=rank,
                                 shown_as=latest.path)  # fmt: skip


def _quiet_reports() -> None:
    """Ray Train V2 logs every report at INFO, once per worker and with the whole metrics dict
    ("Reporting training result N: TrainingReport(...)"), on a logger named by its file's path:
    outside the `ray.train` logger that `LoggingConfig` sets, so it is set here. This trainer
    prints one line of its own per checkpoint (`_report`)."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray's layout: its lines stay, nothing breaks
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _train_worker(config: dict[str, Any]) -> None:
    """The per-worker entry point: the plain loop with Ray's wrappers."""
    _quiet_reports()
    cfg = TrainConfig(**config["cfg"])
    task = get_task(cfg.task)
    data = task.prepare(cfg, tokenizer_json=config["tokenizer"])
    rank = ray.train.get_context().get_world_rank()
    resume = resume_from(ray.train.get_checkpoint(), rank=rank)
    train_loop(
        task,
        data,
        cfg,
        wrap_model=ray.train.torch.prepare_model,
        # The loop's loaders bring their own distributed samplers (EpochSampler, TokenBatches).
        wrap_loader=partial(ray.train.torch.prepare_data_loader, add_dist_sampler=False),
        report=partial(_report, monitor=task.monitor, mode=task.mode),
        rank=rank,
        world_size=ray.train.get_context().get_world_size(),
        device=ray.train.torch.get_device(),
        resume=resume,
    )


def scaling_config(cfg: TrainConfig) -> ScalingConfig:
    """`cfg.workers` workers of one CPU (and one GPU with `use_gpu`) each.

    CPU workers are spread over the nodes (SPREAD): on KubeRay a node is a pod, and workers
    packed into one pod would share its CPU limit (each rank's intra-op threads expect the
    pod's cores to themselves) while the other pods of the worker group idle. SPREAD, unlike
    STRICT_SPREAD, still starts every worker when there are fewer nodes than workers (one
    laptop, a cluster short of a pod) instead of waiting. GPU workers are packed (PACK, Ray's
    default): ranks on one multi-GPU node all-reduce over NVLink instead of the network.
    """
    return ScalingConfig(
        num_workers=cfg.workers,
        use_gpu=cfg.use_gpu,
        resources_per_worker={"CPU": 1, "GPU": 1} if cfg.use_gpu else {"CPU": 1},
        placement_strategy="PACK" if cfg.use_gpu else "SPREAD",
    )


def _load(kept: ray.train.Checkpoint) -> Checkpoint:
    with kept.as_directory() as directory:
        return checkpoint.load(Path(directory) / checkpoint.FILE)


def start_local_ray(*, num_cpus: int, runtime_env: dict[str, Any], attempts: int = 3) -> None:
    """Start a local Ray cluster, again when it did not come up.

    Ray gives its raylet a fixed 30 s to register with the GCS; on a loaded 2-core machine that
    start can miss it ("The current node timed out during startup"), and a second start usually
    succeeds. Any other error is raised at once.
    """
    for attempt in range(1, attempts + 1):
        try:
            # The dashboard serves Ray's State API, which Ray Train's PlacementGroupCleaner asks
            # every second whether the run's controller lives: without it, each ask logged a
            # warning (86 lines in one `make demo`). None: started when ray[default] is there.
            ray.init(num_cpus=num_cpus, include_dashboard=None, runtime_env=runtime_env)
            return
        except Exception as error:  # Ray raises a bare Exception for this one
            if "timed out during startup" not in str(error) or attempt == attempts:
                raise
            print(f"local Ray did not start in time (attempt {attempt} of {attempts}); retrying")
            _stop_half_started_node(error)
            ray.shutdown()


def _stop_half_started_node(error: BaseException) -> None:
    """Stop the GCS and raylet of a start that timed out: Ray raises from inside its `Node`
    constructor, after the processes started and before `ray.shutdown` could know them."""
    from ray._private.node import Node

    frame = error.__traceback__
    while frame is not None:
        node = frame.tb_frame.f_locals.get("self")
        if isinstance(node, Node):
            node.kill_all_processes(check_alive=False, wait=True)
            return
        frame = frame.tb_next


def train_with_ray(
    cfg: TrainConfig, *, tokenizer_json: str, run_name: str
) -> tuple[Checkpoint, Checkpoint]:
    """Train on a Ray cluster (a local one when `RAY_ADDRESS` is unset); return the checkpoints
    of the best validation and of the last epoch.

    Under `ray job submit` the job connects to its cluster; locally Ray starts with as many CPUs
    as workers (at least 2), and with the dashboard when `ray[default]` is installed.
    """
    if not ray.is_initialized():
        # Train V2 routes print() through its logger, which echoed every progress line twice.
        runtime_env = {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
        if os.environ.get("RAY_ADDRESS"):
            ray.init(runtime_env=runtime_env)
        else:
            start_local_ray(num_cpus=max(cfg.workers, 2), runtime_env=runtime_env)
    filesystem, storage_path = filesystem_and_path(cfg.run_dir)  # a local path or a URI
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg.__dict__, "tokenizer": tokenizer_json},
        scaling_config=scaling_config(cfg),
        # Relaunching with the same name resumes from the latest checkpoint; a failed worker
        # group is restarted from it up to `max_failures` times.
        run_config=RunConfig(
            storage_path=storage_path,
            storage_filesystem=filesystem,
            name=run_name,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints or None,
                checkpoint_score_attribute=SCORE,
                checkpoint_score_order="max",
            ),
            # Ray Train's own INFO lines (every report and checkpoint, worker-group set-up) would
            # bury the progress lines; its system log files under the Ray session keep them all.
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name!r} finished without a checkpoint")
    best = result.get_best_checkpoint(metric=SCORE, mode="max") or result.checkpoint
    return _load(best), _load(result.checkpoint)
