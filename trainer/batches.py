"""What one epoch trains on: mini-batches of this rank's shard, or TBPTT chunks of its rows.

Both can start part-way through an epoch (a resumed run): the loader's `EpochSampler` skips
the batches already taken; the TBPTT chunks are sliced from the position on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer.config import TrainConfig
from trainer.resume import EpochSampler
from trainer.tasks import Task, TaskData
from trainer.tasks.base import unwrap
from trainer.tbptt import TruncatedBPTT, chunks, num_chunks, rank_rows, token_stream


def training_batches(
    task: Task, data: TaskData, cfg: TrainConfig, wrap_loader: Callable[..., Any], *,
    rank: int, world_size: int,
) -> tuple[Any, EpochSampler | None, int]:  # fmt: skip
    """The epoch's batches (a loader, or this rank's token rows for TBPTT), the loader's
    sampler, and the number of batches an epoch has."""
    if cfg.bptt:
        stream = token_stream(data.train)
        rows = rank_rows(stream, batch_size=cfg.batch_size, rank=rank, world_size=world_size)
        return rows, None, num_chunks(rows, cfg.bptt)
    sampler = EpochSampler(data.train, num_replicas=world_size, rank=rank, seed=cfg.seed)
    # A generator of its own: starting an iterator then draws nothing from the global one, which
    # dropout uses (a resumed epoch starts its iterator at another point of the global stream).
    loader: DataLoader[Any] = DataLoader(
        data.train,  # type: ignore[arg-type]  # a map-style Sequence
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=task.collate,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return wrap_loader(loader), sampler, len(loader)


def epoch_losses(
    task: Task, model: nn.Module, batches: Any, *, tbptt: TruncatedBPTT | None, bptt: int,
    start: int, steps: int, device: torch.device,
) -> Iterator[tuple[torch.Tensor, int]]:  # fmt: skip
    """(loss, targets) of the training steps `start … steps-1` of one epoch: per batch (the
    loader's sampler already starts at `start`), or per TBPTT chunk."""
    if tbptt is not None:
        for inputs, targets in itertools.islice(chunks(batches, bptt), start, steps):
            yield tbptt.loss(model, unwrap(model), inputs.to(device), targets.to(device))
        return
    for batch in itertools.islice(batches, steps - start):
        yield task.loss(model, {k: v.to(device) for k, v in batch.items()})
