"""The training loop: plain PyTorch, top to bottom; Ray reaches it only through injected callables.

data → model → optimizer → epochs (batches → loss → backward → clip → step) → validate → report.
Language models can instead read the text as one stream with truncated BPTT (`--bptt`, see
`trainer/tbptt.py`): the "batches" are then chunks of this rank's token rows.

`wrap_model` (DDP), `wrap_loader` (moves batches to the device) and `report` (metrics +
checkpoint) are identity / print functions when the loop runs in-process (tests, `--workers 0`,
`--dry-run`), and Ray Train's when it runs under `TorchTrainer`. Every rank reads its own shard
(`EpochSampler`, padded to equal length), runs the same number of optimizer steps, and calls
`report` at the same points: after every epoch, and every `--checkpoint-every-steps` steps
inside one. Rank 0's checkpoint carries what a resume needs (`trainer/checkpoint.py`), so a run
continues from any checkpoint, mid-epoch included, exactly as if it had not stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer.batches import epoch_losses, training_batches
from trainer.checkpoint import (
    MODELS,
    Checkpoint,
    CheckpointError,
    DataSummary,
    Position,
    TrainingState,
    check_world_size,
    weight_normalize,
)
from trainer.config import TrainConfig
from trainer.diagnostics import gradient_flow, probe_examples
from trainer.optim import EarlyStopping, Schedule, build_optimizer, clip_gradients
from trainer.precision import grad_scaler
from trainer.progress import Progress
from trainer.resume import gather, rank_state, restore_rank_state
from trainer.tasks import Task, TaskData
from trainer.tasks.base import Batch, unwrap
from trainer.tbptt import TruncatedBPTT

# report(metrics, checkpoint): the checkpoint is None on ranks other than 0.
Report = Callable[[dict[str, float], Checkpoint | None], None]
PROBE_POOL = 4096  # validation examples searched for the gradient-flow probe batch


@dataclass
class LoopResult:
    model: nn.Module  # unwrapped, in eval mode
    metrics: dict[str, float]
    checkpoint: Checkpoint | None  # the best validation's; None on ranks other than 0


def identity(x: Any) -> Any:
    return x


def print_report(metrics: dict[str, float], checkpoint: Checkpoint | None) -> None:
    if "batch" in metrics:  # a checkpoint inside an epoch: no validation yet
        print(f"checkpoint: epoch {metrics['epoch']:.0f} batch {metrics['batch']:.0f} "
              f"(step {metrics['steps']:.0f})", flush=True)  # fmt: skip
        return
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    print(f"epoch done: {shown}", flush=True)


def make_checkpoint(
    task: Task, data: TaskData, cfg: TrainConfig, model: nn.Module, *,
    metrics: dict[str, float], position: Position | None = None,
    history: list[dict[str, float]] | None = None,
    gradient_flow: list[dict[str, Any]] | None = None, wall_seconds: float = 0.0,
    improved: bool = False, training: TrainingState | None = None,
) -> Checkpoint:  # fmt: skip
    """Everything needed to rebuild and export `model` (unwrapped), with no other file, and
    what the run has done so far (see `Checkpoint`).

    The weights are copied to the CPU: the model trains on, the checkpoint keeps this moment.
    """
    _, config_cls = MODELS[task.name]
    return Checkpoint(
        task=task.name,
        config=cfg,
        model_config=config_cls(**dataclasses.asdict(model.cfg)),  # type: ignore[call-overload]
        weights={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        tokenizer=data.tokenizer.to_str(),
        labels=list(data.labels),
        data=DataSummary(data.description, data.data_report, len(data.train), len(data.valid)),
        metrics=metrics,
        position=position or Position(),
        history=history or [],
        gradient_flow=gradient_flow or [],
        wall_seconds=wall_seconds,
        improved=improved,
        training=training,
    )


def build_model(task: Task, data: TaskData, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The task's model, weight-normalized if asked, on `device`."""
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size())
    if cfg.weight_norm:
        weight_normalize(model)
    return model.to(device)


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
    scaler: torch.amp.GradScaler  # fp16's loss scaling; passes through otherwise

    def run(self, loss: torch.Tensor, targets: int) -> float:
        """Backward, clip, step; every `diagnose_every` steps, measure the gradient flow."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.unscale_(self.optimizer)  # clipping sees the true gradients
        grad_norm = clip_gradients(self.model, self.cfg)
        self.scaler.step(self.optimizer)  # skipped if fp16 gradients overflowed
        self.scaler.update()
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


class _Run:
    """One training run's parts, built once; `train_loop` drives it epoch by epoch."""

    def __init__(self, task: Task, data: TaskData, cfg: TrainConfig, model: nn.Module, *,
                 wrap_loader: Callable[..., Any], rank: int, world_size: int,
                 device: torch.device) -> None:  # fmt: skip
        self.task, self.data, self.cfg, self.model = task, data, cfg, model
        self.rank, self.world_size, self.device = rank, world_size, device
        self.batches, self.sampler, steps = training_batches(
            task, data, cfg, wrap_loader, rank=rank, world_size=world_size
        )
        self.tbptt = TruncatedBPTT() if cfg.bptt else None
        self.epochs = 1 if cfg.dry_run else cfg.epochs or task.defaults.epochs
        self.steps_per_epoch = 1 if cfg.dry_run else steps
        total = self.epochs * self.steps_per_epoch
        self.optimizer = build_optimizer(model.parameters(), cfg)
        self.schedule = Schedule(self.optimizer, cfg, total_steps=total, mode=task.mode)
        self.stopping = EarlyStopping(cfg.patience, task.mode)
        self.progress = Progress(total_steps=total, every=cfg.log_every,
                                 prefix=f"[{task.name}] ", enabled=rank == 0)  # fmt: skip
        probe = task.collate(probe_examples(list(data.valid[:PROBE_POOL]), cfg.batch_size))
        self.step = _Step(task, model, self.optimizer, self.schedule, self.progress, cfg, rank,
                          {k: v.to(device) for k, v in probe.items()}, flows=[],
                          scaler=grad_scaler(cfg.precision, device))  # fmt: skip
        self.history: list[dict[str, float]] = []
        self.grad_norms: list[float] = []  # of the epoch in progress
        self.started = time.perf_counter()

    def restore(self, resume: Checkpoint) -> tuple[int, int]:
        """Continue from `resume`; returns (epoch, batch) to start at."""
        state = resume.training
        if state is None:
            raise CheckpointError("the checkpoint holds no training state to resume from")
        self.optimizer.load_state_dict(state.optimizer)
        if state.scaler:
            self.step.scaler.load_state_dict(state.scaler)
        self.schedule.load_state_dict(state.schedule)
        self.stopping.best, self.stopping.bad_epochs = state.stopping
        self.progress.steps, self.history = resume.position.steps, list(resume.history)
        self.step.flows = list(resume.gradient_flow)
        epoch, batch = resume.position.epoch + 1, resume.position.batch
        if batch:
            self.progress.loss_sum, self.progress.loss_count = state.epoch_loss
            self.grad_norms = list(state.grad_norms)
        if len(state.ranks) == self.world_size:
            carried = restore_rank_state(state.ranks[self.rank], self.device)
            if self.tbptt is not None and batch:
                self.tbptt.state = carried
        if self.rank == 0:
            where = f"epoch {epoch}, batch {batch}" if batch else f"epoch {epoch}"
            print(f"[{self.task.name}] resuming at {where} (step {self.progress.steps})")
        return epoch, batch

    def train_epoch(self, epoch: int, start: int, report: Report) -> None:
        """Optimizer steps `start …` of `epoch`, reporting a checkpoint every N steps."""
        if self.sampler is not None:
            self.sampler.start_at(epoch, start)
        if start == 0:
            self.grad_norms = []
            if self.tbptt is not None:
                self.tbptt.reset()  # the state is zero at the start of every epoch
        self.model.train()
        losses = epoch_losses(
            self.task, self.model, self.batches, tbptt=self.tbptt, bptt=self.cfg.bptt,
            start=start, steps=self.steps_per_epoch, device=self.device,
            precision=self.cfg.precision,
        )  # fmt: skip
        every = self.cfg.checkpoint_every_steps
        for batch, (loss, targets) in enumerate(losses, start + 1):
            self.grad_norms.append(self.step.run(loss, targets))
            if every and self.progress.steps % every == 0 and batch < self.steps_per_epoch:
                metrics = self._step_metrics(epoch, batch)
                report(metrics, self.checkpoint(metrics, epoch=epoch - 1, batch=batch))

    def _step_metrics(self, epoch: int, batch: int) -> dict[str, float]:
        """What a checkpoint inside an epoch reports (no validation has run)."""
        progress = self.progress
        return {
            "epoch": float(epoch),
            "batch": float(batch),
            "steps": float(progress.steps),
            "lr": self.schedule.lr,
            "train_loss": progress.loss_sum / max(progress.loss_count, 1),
        }

    def validate(self, epoch: int) -> dict[str, float]:
        self.model.eval()
        norms = self.grad_norms
        metrics = self.task.evaluate(unwrap(self.model), self.data) | {
            "epoch": float(epoch),
            "train_loss": self.progress.mean_loss(),
            "steps": float(self.progress.steps),
            "lr": self.schedule.lr,
            "grad_norm_mean": sum(norms) / max(len(norms), 1),
            "grad_norm_max": max(norms, default=0.0),
        }
        self.progress.emit(" | " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self.schedule.epoch_end(metrics[self.task.monitor])
        self.history.append(metrics)
        return metrics

    def checkpoint(self, metrics: dict[str, float], *, epoch: int, batch: int,
                   improved: bool = False) -> Checkpoint | None:  # fmt: skip
        """Rank 0's checkpoint after `epoch` epochs and `batch` steps of the next (every rank
        must call this: it gathers each rank's generators and carried state)."""
        carried = self.tbptt.state if self.tbptt is not None else None
        ranks = gather(rank_state(carried), self.world_size)
        if self.rank != 0:
            return None
        training = TrainingState(
            optimizer=self.optimizer.state_dict(),
            scaler=self.step.scaler.state_dict(),  # empty unless fp16
            schedule=self.schedule.state_dict(),
            stopping=(self.stopping.best, self.stopping.bad_epochs),
            epoch_loss=(self.progress.loss_sum, self.progress.loss_count),
            grad_norms=list(self.grad_norms),
            ranks=ranks,
        )
        return make_checkpoint(
            self.task, self.data, self.cfg, unwrap(self.model), metrics=metrics,
            position=Position(epoch, batch, self.progress.steps), history=list(self.history),
            gradient_flow=list(self.step.flows), improved=improved, training=training,
            wall_seconds=time.perf_counter() - self.started,
        )  # fmt: skip


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
    resume: Checkpoint | None = None,
) -> LoopResult:
    """Train `task` on `data`; return the model and the checkpoint of its best validation.

    `resume` (a checkpoint, `trainer.checkpoint.resume`) continues a run where it was taken, at
    an epoch boundary or inside an epoch, with the model, optimizer, schedule, early stopping,
    counters, data position and random state as they were: what follows is what an
    uninterrupted run would have done.
    """
    device = device or torch.device("cpu")
    inner = build_model(task, data, cfg, device)
    if resume is not None:
        check_world_size(resume, world_size)
        inner.load_state_dict(resume.weights)
    run = _Run(task, data, cfg, wrap_model(inner), wrap_loader=wrap_loader, rank=rank,
               world_size=world_size, device=device)  # fmt: skip
    first_epoch, start = run.restore(resume) if resume is not None else (1, 0)
    metrics: dict[str, float] = run.history[-1] if run.history else {}
    best: Checkpoint | None = None
    last: Checkpoint | None = None
    for epoch in range(first_epoch, run.epochs + 1):
        run.train_epoch(epoch, start if epoch == first_epoch else 0, report)
        metrics = run.validate(epoch)
        improved = run.stopping.improved(metrics[task.monitor])
        checkpoint = run.checkpoint(metrics, epoch=epoch, batch=0, improved=improved)
        last = checkpoint or last
        if improved:
            best = checkpoint
        report(metrics, checkpoint)
        if run.stopping.should_stop:  # every rank sees the same metrics, so all stop together
            if rank == 0:
                print(f"[{task.name}] early stop: {task.monitor} stalled {cfg.patience} epochs")
            break
    return LoopResult(model=unwrap(run.model).eval(), metrics=metrics, checkpoint=best or last)
