"""The checkpoint: one typed record of a training run at one moment, and the one place that saves,
finds and resumes it, for the in-process loop and for Ray Train alike.

A checkpoint carries its own configuration, so it rebuilds and exports the model with no other
file (as nanoGPT's does), and everything a resumed run needs: the optimizer, loss scaler,
schedule and early-stopping state, the data position and every rank's random state
(`trainer/resume.py`). Each thing is stored once. On disk it is `Checkpoint.to_dict()`: plain
containers and tensors, which `torch.load(weights_only=True)` reads back without running code,
with a `format` number that `from_dict` checks, so a file of another Recur is refused with a
message instead of being misread.

Files: an in-process run keeps `last.pt` (the latest) and `best.pt` (the best validation's) in
its run directory; each Ray Train checkpoint is a directory with one `checkpoint.pt`; a finished
run's `checkpoint.pt` is its best, what `recur-export` re-exports.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.models import (
    Classifier,
    ClassifierConfig,
    LanguageModel,
    LanguageModelConfig,
    Seq2Seq,
    Seq2SeqConfig,
)
from trainer.models.recurrent import RecurrentStack, apply_weight_norm
from trainer.resume import RankState

FORMAT = 2  # the layout of `to_dict`; 1 was the untyped dict of Recur before this module
LAST, BEST = "last.pt", "best.pt"  # an in-process run directory's latest and best
FILE = "checkpoint.pt"  # a finished run's best (for recur-export); each Ray checkpoint's file

ModelConfig = ClassifierConfig | LanguageModelConfig | Seq2SeqConfig
MODELS: dict[str, tuple[type[nn.Module], type[ModelConfig]]] = {
    "translation": (Seq2Seq, Seq2SeqConfig),
    "sentiment": (Classifier, ClassifierConfig),
    "autocomplete": (LanguageModel, LanguageModelConfig),
}
_OLDER = (
    "was written by an older Recur (checkpoint format 1, before typed checkpoints); this Recur "
    f"reads format {FORMAT}. Re-export it with the Recur that wrote it (`git checkout "
    "$(git log --format=%h --diff-filter=A -- trainer/checkpoint.py)~1`, then `recur-export "
    "--checkpoint <run>`), or train again under a new --run-name; bundles exported from it "
    "are unaffected"
)


class CheckpointError(ValueError):
    """A file that is not a checkpoint this Recur reads, or one that cannot resume this run."""


@dataclass
class Position:
    """Where the run is: `epoch` epochs done, `batch` optimizer steps into the next one (0 at an
    epoch's end), `steps` optimizer steps in all."""

    epoch: int = 0
    batch: int = 0
    steps: int = 0


@dataclass
class DataSummary:
    """What the model was trained on, for the bundle's manifest and the run's metrics.json."""

    description: str
    report: list[dict[str, Any]]  # per file: usable lines, malformed lines by reason
    train_examples: int
    valid_examples: int


@dataclass
class TrainingState:
    """What only a resumed run needs besides the weights."""

    optimizer: dict[str, Any]
    scaler: dict[str, Any]  # fp16's loss scale; empty otherwise
    schedule: dict[str, Any]
    stopping: tuple[float | None, int]  # early stopping: best monitored value, epochs since
    epoch_loss: tuple[float, int]  # the epoch in progress: sum and count of its losses
    grad_norms: list[float]  # the epoch in progress: each step's gradient norm
    ranks: list[RankState]  # every rank's generators and carried TBPTT state, in rank order

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer, "scaler": self.scaler, "schedule": self.schedule,
            "stopping": self.stopping, "epoch_loss": self.epoch_loss,
            "grad_norms": self.grad_norms, "ranks": [r.to_dict() for r in self.ranks],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingState:
        best, bad_epochs = d["stopping"]
        loss_sum, loss_count = d["epoch_loss"]
        return cls(
            optimizer=d["optimizer"], scaler=d["scaler"], schedule=d["schedule"],
            stopping=(best, bad_epochs), epoch_loss=(loss_sum, loss_count),
            grad_norms=list(d["grad_norms"]), ranks=[RankState.from_dict(r) for r in d["ranks"]],
        )  # fmt: skip


@dataclass
class Checkpoint:
    """A run's model and its state after `position`; `training` is None for a model that was not
    trained by the loop (tests export untrained ones)."""

    task: str
    config: TrainConfig
    model_config: ModelConfig
    # The training model's state dict: weight-norm parametrized under `config.weight_norm`
    # (so a resumed run continues exactly); `trainer.export.rebuild_model` folds it.
    weights: dict[str, torch.Tensor]
    tokenizer: str  # the tokenizer's JSON
    labels: list[str]
    data: DataSummary
    metrics: dict[str, float]  # what this checkpoint reported (+ test_* metrics after --test)
    position: Position = field(default_factory=Position)
    history: list[dict[str, float]] = field(default_factory=list)  # every validation's metrics
    gradient_flow: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0  # training time of the launch that wrote it
    improved: bool = False  # its validation is the best of the run so far
    training: TrainingState | None = None

    def to_dict(self) -> dict[str, Any]:
        """The saved form: plain containers and tensors, loadable with `weights_only=True`."""
        return {
            "format": FORMAT,
            "task": self.task,
            "config": dataclasses.asdict(self.config),
            "model_config": dataclasses.asdict(self.model_config),
            "weights": self.weights,
            "tokenizer": self.tokenizer,
            "labels": self.labels,
            "data": dataclasses.asdict(self.data),
            "metrics": self.metrics,
            "position": dataclasses.asdict(self.position),
            "history": self.history,
            "gradient_flow": self.gradient_flow,
            "wall_seconds": self.wall_seconds,
            "improved": self.improved,
            "training": None if self.training is None else self.training.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: object) -> Checkpoint:
        """The checkpoint `to_dict` saved.

        Raises:
            CheckpointError: not a checkpoint, or one of another format (older or newer Recur).
        """
        if not isinstance(d, Mapping) or ("format" not in d and "model_state" not in d):
            raise CheckpointError("is not a Recur checkpoint")
        if "format" not in d:
            raise CheckpointError(_OLDER)
        if d["format"] != FORMAT:
            raise CheckpointError(
                f"was written by a newer Recur (checkpoint format {d['format']}); this Recur "
                f"reads format {FORMAT}: read it with the Recur that wrote it"
            )
        try:
            return cls._read(d)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"is a damaged checkpoint ({type(e).__name__}: {e})") from None

    @classmethod
    def _read(cls, d: Mapping[str, Any]) -> Checkpoint:
        known = {f.name for f in dataclasses.fields(TrainConfig)}  # a setting since removed: gone
        _, config_cls = MODELS[d["task"]]
        training = d["training"]
        return cls(
            task=d["task"],
            config=TrainConfig(**{k: v for k, v in d["config"].items() if k in known}),
            model_config=config_cls(**d["model_config"]),
            weights=dict(d["weights"]),
            tokenizer=d["tokenizer"],
            labels=list(d["labels"]),
            data=DataSummary(**d["data"]),
            metrics=dict(d["metrics"]),
            position=Position(**d["position"]),
            history=list(d["history"]),
            gradient_flow=list(d["gradient_flow"]),
            wall_seconds=d["wall_seconds"],
            improved=d["improved"],
            training=None if training is None else TrainingState.from_dict(training),
        )


def weight_normalize(model: nn.Module) -> nn.Module:
    """Weight-normalize every recurrent stack of `model` (`--weight-norm`); returns `model`."""
    for module in model.modules():
        if isinstance(module, RecurrentStack):
            apply_weight_norm(module)
    return model


def save(checkpoint: Checkpoint, path: Path) -> None:
    """Write `checkpoint` to a temporary file, flushed and fsynced, then renamed over `path`: a
    crash mid-write leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(checkpoint.to_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def load(path: Path) -> Checkpoint:
    """The checkpoint at `path`, on the CPU.

    Raises:
        CheckpointError: the file is not a checkpoint this Recur reads; the message names it.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"{path} is not a Recur checkpoint ({type(e).__name__}: {e})") from e
    try:
        return Checkpoint.from_dict(saved)
    except CheckpointError as e:
        raise CheckpointError(f"{path} {e}") from None


def save_latest(checkpoint: Checkpoint, path: Path) -> None:
    """Keep `checkpoint` as an in-process run's latest (`path`) and, when its validation is the
    best so far, as the run's best (`best.pt` beside it)."""
    save(checkpoint, path)
    if checkpoint.improved:
        save(checkpoint, path.with_name(BEST))


def best_and_latest(directory: Path) -> tuple[Checkpoint, Checkpoint]:
    """An in-process run's best and latest checkpoints. `best.pt` spans every launch of the run
    (a relaunch of a finished run trains nothing); without one, the latest is the best."""
    latest = load(directory / LAST)
    best = directory / BEST
    return (load(best) if best.is_file() else latest), latest


def resume(path: Path, *, rank: int = 0, shown_as: str = "") -> Checkpoint | None:
    """The checkpoint a relaunched or restarted run continues from: the one at `path` (an
    in-process run's `last.pt`, or the file of Ray Train's latest checkpoint), or None when
    there is none (a new run). Rank 0 says which (as `shown_as`, default `path`).

    Raises:
        CheckpointError: the file is not a checkpoint this Recur reads, or it has no training
            state to continue from.
    """
    if not path.is_file():
        return None
    checkpoint = load(path)
    if checkpoint.training is None:
        raise CheckpointError(f"{path} holds a model but no training state to resume from")
    if rank == 0:
        at = checkpoint.position
        print(f"[{checkpoint.task}] restored {shown_as or path}: epoch {at.epoch} done, "
              f"batch {at.batch} of the next", flush=True)  # fmt: skip
    return checkpoint


def check_world_size(checkpoint: Checkpoint, world_size: int) -> None:
    """A run resumed mid-epoch must have as many ranks as the run that saved it (the shards and
    the token rows are cut per rank); at an epoch boundary any number will do."""
    saved = len(checkpoint.training.ranks) if checkpoint.training is not None else 0
    if checkpoint.position.batch and saved and saved != world_size:
        raise CheckpointError(
            f"the checkpoint stopped mid-epoch with {saved} workers; resume it with "
            f"--workers {saved} (this run has {world_size})"
        )
