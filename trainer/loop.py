"""The training loop: plain PyTorch, top to bottom; Ray reaches it only through injected callables.

data → model → optimizer → epochs (batches → loss → backward → clip → step) → validate → report.
Language models can instead read the text as one stream with truncated BPTT (`--bptt`, see
`trainer/tbptt.py`): the "batches" are then chunks of this rank's token rows.

`wrap_model` (DDP), `wrap_loader` (a DistributedSampler) and `report` (metrics + checkpoint) are
identity / print functions when the loop runs in-process (tests, `--workers 0`, `--dry-run`), and
Ray Train's when it runs under `TorchTrainer`. Every rank runs the same number of optimizer steps
(the distributed sampler pads the shards to equal length) and calls `report` once per epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer.config import TrainConfig
from trainer.diagnostics import gradient_flow, probe_examples
from trainer.models.recurrent import RecurrentStack, apply_weight_norm, remove_weight_norm
from trainer.optim import EarlyStopping, Schedule, build_optimizer, clip_gradients
from trainer.progress import Progress
from trainer.tasks import Task, TaskData
from trainer.tasks.base import Batch, unwrap
from trainer.tbptt import TruncatedBPTT, chunks, num_chunks, rank_rows

# report(metrics, checkpoint): the checkpoint is None on ranks other than 0.
Report = Callable[[dict[str, float], dict[str, Any] | None], None]


@dataclass
class LoopResult:
    model: nn.Module  # unwrapped, in eval mode
    metrics: dict[str, float]
    checkpoint: dict[str, Any] | None  # the best validation's; None on ranks other than 0


def identity(x: Any) -> Any:
    return x


def print_report(metrics: dict[str, float], checkpoint: dict[str, Any] | None) -> None:
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    print(f"epoch done: {shown}", flush=True)


def make_checkpoint(
    task: Task, data: TaskData, cfg: TrainConfig, model: nn.Module, extra: dict[str, Any]
) -> dict[str, Any]:
    """Everything needed to rebuild and export the model, with no other file.

    Weight-norm parametrizations are folded into plain weights, so the checkpoint loads into the
    model built from its config alone.
    """
    plain = copy.deepcopy(model).cpu()
    remove_weight_norm(plain)
    return {
        "task": task.name,
        "config": dataclasses.asdict(cfg),
        "model_config": dataclasses.asdict(model.cfg),  # type: ignore[call-overload]
        "model_state": {k: v.detach() for k, v in plain.state_dict().items()},
        "tokenizer": data.tokenizer.to_str(),
        "labels": list(data.labels),
        "data": data.description,
        "data_report": data.data_report,  # per file: usable lines, malformed lines by reason
        "train_examples": len(data.train),
        "valid_examples": len(data.valid),
        **extra,
    }


def build_model(task: Task, data: TaskData, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The task's model, weight-normalized if asked, on `device`."""
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size())
    if cfg.weight_norm:
        for module in model.modules():
            if isinstance(module, RecurrentStack):
                apply_weight_norm(module)
    return model.to(device)


def _epoch_losses(
    task: Task,
    model: nn.Module,
    batches: Any,
    *,
    tbptt: TruncatedBPTT | None,
    bptt: int,
    steps: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, int]]:
    """(loss, targets) of each training step of one epoch: per batch, or per TBPTT chunk."""
    if tbptt is not None:
        tbptt.reset()  # the state is zero at the start of every epoch
        for step, (inputs, targets) in enumerate(chunks(batches, bptt)):
            if step == steps:
                return
            yield tbptt.loss(model, unwrap(model), inputs.to(device), targets.to(device))
        return
    for step, batch in enumerate(batches):
        if step == steps:
            return
        yield task.loss(model, {k: v.to(device) for k, v in batch.items()})


def _training_batches(
    task: Task, data: TaskData, cfg: TrainConfig, wrap_loader: Callable[..., Any], *,
    rank: int, world_size: int,
) -> tuple[Any, int]:  # fmt: skip
    """The epoch's batches (a loader, or this rank's token rows for TBPTT) and their count."""
    if cfg.bptt:
        stream = [token for example in data.train for token in example]
        rows = rank_rows(stream, batch_size=cfg.batch_size, rank=rank, world_size=world_size)
        return rows, num_chunks(rows, cfg.bptt)
    loader = wrap_loader(
        DataLoader(
            data.train,
            batch_size=cfg.batch_size,
            shuffle=True,
            collate_fn=task.collate,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
    )
    return loader, len(loader)


@dataclass
class _Step:
    """The parts one optimizer step needs."""

    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    progress: Progress
    cfg: TrainConfig
    rank: int
    probe: Batch
    flows: list[dict[str, Any]]

    def run(self, loss: torch.Tensor, targets: int) -> float:
        """Backward, clip, step; every `diagnose_every` steps, measure the gradient flow."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(self.model, self.cfg)
        self.optimizer.step()
        self.schedule.step()
        self.progress.step(loss.item(), targets)
        every = self.cfg.diagnose_every
        if self.rank == 0 and every and self.progress.steps % every == 0:
            flow = gradient_flow(
                self.task, unwrap(self.model), self.probe, step=self.progress.steps,
                grad_norm=grad_norm,
            )  # fmt: skip
            self.flows.append(flow.to_dict())
            if warning := flow.warning():
                print(f"[{self.task.name}] WARNING: {warning}", flush=True)
        return grad_norm


def train_loop(
    task: Task,
    data: TaskData,
    cfg: TrainConfig,
    *,
    wrap_model: Callable[[nn.Module], nn.Module] = identity,
    wrap_loader: Callable[[DataLoader[Any]], Any] = identity,
    report: Report = print_report,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    resume: dict[str, Any] | None = None,
) -> LoopResult:
    """Train `task` on `data`; return the model and the checkpoint of its best validation.

    `resume` (a checkpoint's "resume" entry) continues a run at the epoch after the one it saved,
    with the model, optimizer, schedule, early-stopping and step counters as they were; the data
    order of every later epoch is the one an uninterrupted run would have seen.
    """
    device = device or torch.device("cpu")
    inner = build_model(task, data, cfg, device)
    if resume is not None:
        inner.load_state_dict(resume["model_state"])
    model = wrap_model(inner)
    batches, steps_per_epoch = _training_batches(
        task, data, cfg, wrap_loader, rank=rank, world_size=world_size
    )
    tbptt = TruncatedBPTT() if cfg.bptt else None
    epochs = 1 if cfg.dry_run else cfg.epochs or task.defaults.epochs
    steps_per_epoch = 1 if cfg.dry_run else steps_per_epoch
    optimizer = build_optimizer(model.parameters(), cfg)
    schedule = Schedule(optimizer, cfg, total_steps=epochs * steps_per_epoch, mode=task.mode)
    stopping = EarlyStopping(cfg.patience, task.mode)
    progress = Progress(total_steps=epochs * steps_per_epoch, every=cfg.log_every,
                        prefix=f"[{task.name}] ", enabled=rank == 0)  # fmt: skip
    probe = task.collate(probe_examples(data.valid, cfg.batch_size))
    step = _Step(task, model, optimizer, schedule, progress, cfg, rank,
                 {k: v.to(device) for k, v in probe.items()}, flows=[])  # fmt: skip
    start, history, first_epoch = time.perf_counter(), [], 1
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        stopping.best, stopping.bad_epochs = resume["stopping"]
        progress.steps, history, step.flows = resume["steps"], resume["history"], resume["flows"]
        first_epoch = resume["epoch"] + 1
        if rank == 0:
            print(f"[{task.name}] resuming at epoch {first_epoch} (step {progress.steps})")
    metrics: dict[str, float] = history[-1] if history else {}
    best: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    for epoch in range(first_epoch, epochs + 1):
        sampler = getattr(batches, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a new shuffle per epoch, the same on every rank
        elif (generator := getattr(batches, "generator", None)) is not None:
            generator.manual_seed(cfg.seed + epoch)  # in-process: each epoch's order is fixed
        model.train()
        losses = _epoch_losses(
            task, model, batches, tbptt=tbptt, bptt=cfg.bptt, steps=steps_per_epoch, device=device
        )
        grad_norms = [step.run(loss, targets) for loss, targets in losses]
        model.eval()
        metrics = task.evaluate(unwrap(model), data) | {
            "epoch": float(epoch),
            "train_loss": progress.mean_loss(),
            "steps": float(progress.steps),
            "lr": schedule.lr,
            "grad_norm_mean": sum(grad_norms) / max(len(grad_norms), 1),
            "grad_norm_max": max(grad_norms, default=0.0),
        }
        progress.emit(" | " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        schedule.epoch_end(metrics[task.monitor])
        history.append(metrics)
        extra = {"metrics": metrics, "steps": progress.steps, "epochs": epoch,
                 "history": list(history), "gradient_flow": list(step.flows),
                 "wall_seconds": time.perf_counter() - start}  # fmt: skip
        improved = stopping.improved(metrics[task.monitor])
        checkpoint = None
        if rank == 0:
            extra["resume"] = {
                "model_state": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "stopping": (stopping.best, stopping.bad_epochs),
                "epoch": epoch,
                "steps": progress.steps,
                "history": list(history),
                "flows": list(step.flows),
            }
            checkpoint = last = make_checkpoint(task, data, cfg, unwrap(model), extra)
        if improved:
            best = checkpoint
        report(metrics, checkpoint)
        if stopping.should_stop:  # every rank sees the same metrics, so all stop together
            if rank == 0:
                print(f"[{task.name}] early stop: {task.monitor} stalled {cfg.patience} epochs")
            break
    return LoopResult(model=unwrap(model).eval(), metrics=metrics, checkpoint=best or last)
