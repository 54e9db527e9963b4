"""Per step, how long each task's model computes and how long its gradient all-reduce takes, with
two Ray Train workers on two simulated nodes (a head with no CPUs and two 1-CPU raylets on this
machine, gloo between them); then the ring all-reduce cost model for N workers.

    .venv/bin/python -m scripts.allreduce_split [--steps 20] [--json docs/multinode.json]

Each worker times, for its first mini-batch of every task (default model, `--batch-size`):
forward + backward without DDP (compute), `all_reduce` of the flattened gradients (communication,
after a barrier), and a DDP step (forward + backward with the bucketed all-reduce overlapped).
The medians of rank 0 are reported. On one machine the "network" is loopback, so the measured
all-reduce is a floor set by gloo's overheads and memory copies, not by a link.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

TASKS = ("sentiment", "translation", "autocomplete")
LINKS_GBPS = (25, 100)
WORLD_SIZES = (2, 4, 8, 16, 32, 64)


def ring_allreduce_s(num_bytes: float, workers: int, gbps: float) -> float:
    """Bandwidth term of a ring all-reduce: each worker sends and receives 2(N-1)/N of the data."""
    return 2 * (workers - 1) / workers * num_bytes * 8 / (gbps * 1e9)


def _median_s(fn: Any, steps: int) -> float:
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _measure(task_name: str, batch_size: int, steps: int) -> dict[str, float]:
    """On one Ray Train worker: compute, all-reduce and DDP step times of one task's model."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from trainer.batches import training_batches
    from trainer.config import resolve
    from trainer.tasks import get_task
    from trainer.tasks.base import on_device

    torch.manual_seed(0)
    cfg = resolve({"task": task_name, "batch_size": batch_size, "max_train_examples": 4000},
                  environ={})  # fmt: skip
    task = get_task(task_name)
    data = task.prepare(cfg)
    context = ray.train.get_context()
    loader, _, _ = training_batches(
        task, data, cfg, lambda x: x,
        rank=context.get_world_rank(), world_size=context.get_world_size(),
    )  # fmt: skip
    model = task.build_model(cfg, data.tokenizer.get_vocab_size())
    batch = on_device(next(iter(loader)), model)
    params = [p for p in model.parameters() if p.requires_grad]

    def compute() -> None:
        model.zero_grad()
        loss, _ = task.loss(model, batch)
        loss.backward()

    compute()  # warm-up: allocations, first-call overheads
    compute_s = _median_s(compute, steps)
    flat = torch.cat([p.grad.flatten() for p in params if p.grad is not None])

    def allreduce() -> None:
        dist.all_reduce(flat)

    dist.barrier()
    allreduce()
    dist.barrier()
    allreduce_s = _median_s(allreduce, steps)
    ddp = ray.train.torch.prepare_model(model)

    def ddp_step() -> None:
        ddp.zero_grad()
        loss, _ = task.loss(ddp, batch)
        loss.backward()

    ddp_step()
    dist.barrier()
    ddp_s = _median_s(ddp_step, steps)
    return {
        "parameters": float(sum(p.numel() for p in params)),
        "gradient_bytes": float(flat.numel() * flat.element_size()),
        "compute_s": compute_s,
        "allreduce_s": allreduce_s,
        "ddp_step_s": ddp_s,
        "threads": float(torch.get_num_threads()),
    }


def _forward_backward(task: Any, model: Any, batch: dict[str, Any], *, sync: bool) -> None:
    model.zero_grad()
    loss, _ = task.loss(model, batch)
    loss.backward()
    if sync:
        import torch

        torch.cuda.synchronize()


def compute_only(device: str, batch_sizes: list[int], steps: int) -> dict[str, Any]:
    """Forward + backward time of each task's default model on `device` (no Ray, no DDP) for
    mini-batches of `batch_sizes` examples drawn with replacement from the builtin corpus."""
    import torch

    from trainer.config import resolve
    from trainer.tasks import get_task

    out: dict[str, Any] = {"device": device, "tasks": {}}
    if device == "cuda":
        out["device_name"] = torch.cuda.get_device_name()
    for name in TASKS:
        torch.manual_seed(0)
        cfg = resolve({"task": name}, environ={})
        task = get_task(name)
        data = task.prepare(cfg)
        model = task.build_model(cfg, data.tokenizer.get_vocab_size()).to(device)
        times = {}
        for b in batch_sizes:
            picks = torch.randint(len(data.train), (b,)).tolist()
            batch = {
                k: v.to(device) for k, v in task.collate([data.train[i] for i in picks]).items()
            }

            step = partial(_forward_backward, task, model, batch, sync=device == "cuda")
            step()
            times[str(b)] = _median_s(step, steps)
        out["tasks"][name] = times
    return out


def _worker(config: dict[str, Any]) -> None:
    """Every rank measures; rank 0's results travel back as a checkpoint (the run's result)."""
    import ray.train
    import torch.distributed as dist

    results = {t: _measure(t, config["batch_size"], config["steps"]) for t in TASKS}
    nodes: list[str | None] = [None, None]  # the node of each rank: two different ones
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({})
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "split.json").write_text(json.dumps({"tasks": results, "nodes": nodes}))
        ray.train.report({}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def measure(batch_size: int, steps: int) -> dict[str, Any]:
    """Start the simulated 2-node cluster, run the measurement, shut the cluster down."""
    temp = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # short socket paths, private address file
    os.environ["RAY_TMPDIR"] = temp
    os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
    import ray
    from ray.cluster_utils import Cluster
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"batch_size": batch_size, "steps": steps},
            scaling_config=ScalingConfig(num_workers=2, placement_strategy="SPREAD"),
            run_config=RunConfig(storage_path=f"{temp}/storage", name="allreduce-split"),
        )
        result = trainer.fit()
        assert result.checkpoint is not None
        with result.checkpoint.as_directory() as directory:
            measured = json.loads((Path(directory) / "split.json").read_text())
        return {"batch_size": batch_size, "steps": steps, **measured}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def markdown(report: dict[str, Any]) -> str:
    """The measured split and the cost model, as the tables of docs/multinode.md."""
    lines = [
        "| task | parameters | gradient bytes / step | compute (fwd+bwd) | all-reduce | DDP step |"
        " all-reduce / compute |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, r in report["tasks"].items():
        lines.append(
            f"| {task} | {r['parameters']:,.0f} | {r['gradient_bytes'] / 1e6:.2f} MB "
            f"| {r['compute_s'] * 1e3:.1f} ms | {r['allreduce_s'] * 1e3:.1f} ms "
            f"| {r['ddp_step_s'] * 1e3:.1f} ms | {r['allreduce_s'] / r['compute_s']:.2f} |"
        )
    header = " | ".join(f"N={n}" for n in WORLD_SIZES)
    lines += ["", f"| task | link | {header} |", "|---|---|" + "---:|" * len(WORLD_SIZES)]
    for task, r in report["tasks"].items():
        for gbps in LINKS_GBPS:
            times = [ring_allreduce_s(r["gradient_bytes"], n, gbps) for n in WORLD_SIZES]
            cells = " | ".join(f"{t * 1e3:.3f} ms" for t in times)
            lines.append(f"| {task} | {gbps} Gb/s | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64, help="examples per worker")
    parser.add_argument("--steps", type=int, default=20, help="timed repetitions (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--compute-only", default="", help="cpu or cuda: only forward+backward "
                        "times, in this process, for --batch-sizes")  # fmt: skip
    parser.add_argument("--batch-sizes", default="64,256,1024,4096")
    args = parser.parse_args()
    if args.compute_only:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        measured = compute_only(args.compute_only, sizes, args.steps)
        print(json.dumps(measured, indent=1))
        if args.json:
            args.json.write_text(json.dumps(measured, indent=1) + "\n")
        return
    report = measure(args.batch_size, args.steps)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
