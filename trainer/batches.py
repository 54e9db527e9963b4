"""What one epoch trains on: mini-batches of this rank's shard, or TBPTT chunks of its rows.

Mini-batches are `--batch-size` examples drawn at random (`--batch-type examples`), or examples
of similar length up to `--batch-size` padded tokens (`--batch-type tokens`: `TokenBatches`, as
OpenNMT's `batch_type tokens` and fairseq's `--max-tokens`). All three can start part-way
through an epoch (a resumed run): the sampler skips the batches already taken; the TBPTT chunks
are sliced from the position on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from trainer.config import TrainConfig
from trainer.precision import autocast
from trainer.resume import EpochSampler
from trainer.tasks import Task, TaskData
from trainer.tasks.base import unwrap
from trainer.tbptt import TruncatedBPTT, chunks, num_chunks, rank_rows, token_stream


def training_batches(
    task: Task, data: TaskData, cfg: TrainConfig, wrap_loader: Callable[..., Any], *,
    rank: int, world_size: int,
) -> tuple[Any, EpochSampler | TokenBatches | None, int]:  # fmt: skip
    """The epoch's batches (a loader, or this rank's token rows for TBPTT), the loader's
    sampler, and the number of batches an epoch has."""
    if cfg.bptt:
        stream = token_stream(data.train)
        rows = rank_rows(stream, batch_size=cfg.batch_size, rank=rank, world_size=world_size)
        return rows, None, num_chunks(rows, cfg.bptt)
    # A generator of its own: starting an iterator then draws nothing from the global one, which
    # dropout uses (a resumed epoch starts its iterator at another point of the global stream).
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler: EpochSampler | TokenBatches
    if cfg.batch_type == "tokens":
        sampler = TokenBatches(
            [task.length(example) for example in data.train], max_tokens=cfg.batch_size,
            num_replicas=world_size, rank=rank, seed=cfg.seed,
        )  # fmt: skip
        loader: DataLoader[Any] = DataLoader(
            data.train,  # type: ignore[arg-type]  # a map-style Sequence
            batch_sampler=sampler, collate_fn=task.collate, generator=generator,
        )  # fmt: skip
    else:
        sampler = EpochSampler(
            data.train, num_replicas=world_size, rank=rank, seed=cfg.seed,
            batch_size=cfg.batch_size,
        )  # fmt: skip
        loader = DataLoader(
            data.train,  # type: ignore[arg-type]
            batch_size=cfg.batch_size, sampler=sampler, collate_fn=task.collate,
            generator=generator,
        )  # fmt: skip
    return wrap_loader(loader), sampler, len(loader)


class TokenBatches(Sampler[list[int]]):
    """Batches of examples of similar length, each at most `max_tokens` tokens once padded
    (examples x the longest one's length; an example longer than the budget is a batch alone).

    The batches are cut once: the examples sorted by length (equal lengths in a seeded random
    order), a new batch started wherever the next example would take the padded size past the
    budget, so padding is what is left within one length class. Each epoch shuffles the order of
    the batches (`seed + epoch`) and deals them to the ranks in turn, repeating the first ones of
    that order so every rank has the same number (data-parallel ranks take the same number of
    optimizer steps). The batches differ in their number of examples: each step's loss is the
    mean over its own targets.
    """

    def __init__(
        self, lengths: Sequence[int], *, max_tokens: int, num_replicas: int, rank: int, seed: int
    ) -> None:
        tiebreak = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed))
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], int(tiebreak[i])))
        self.batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0
        for i in order:
            if batch and max(longest, lengths[i]) * (len(batch) + 1) > max_tokens:
                self.batches.append(batch)
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, lengths[i])
        if batch:
            self.batches.append(batch)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.per_rank = math.ceil(len(self.batches) / num_replicas)
        self.epoch = self.start = 0

    def start_at(self, epoch: int, batches: int) -> None:
        """Read epoch `epoch` after this rank's first `batches` batches."""
        self.epoch, self.start = epoch, batches

    def __iter__(self) -> Iterator[list[int]]:
        shuffle = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.batches), generator=shuffle).tolist()
        dealt = list(itertools.islice(itertools.cycle(order), self.per_rank * self.num_replicas))
        mine = dealt[self.rank :: self.num_replicas]
        return (self.batches[i] for i in mine[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def epoch_losses(
    task: Task, model: nn.Module, batches: Any, *, tbptt: TruncatedBPTT | None, bptt: int,
    start: int, steps: int, device: torch.device, precision: str = "fp32",
) -> Iterator[tuple[torch.Tensor, int]]:  # fmt: skip
    """(loss, targets) of the training steps `start … steps-1` of one epoch: per batch (the
    loader's sampler already starts at `start`), or per TBPTT chunk; forward passes under
    `precision`'s autocast."""
    if tbptt is not None:
        for inputs, targets in itertools.islice(chunks(batches, bptt), start, steps):
            with autocast(precision, device):
                loss = tbptt.loss(model, unwrap(model), inputs.to(device), targets.to(device))
            yield loss
        return
    for batch in itertools.islice(batches, steps - start):
        with autocast(precision, device):
            loss = task.loss(model, {k: v.to(device) for k, v in batch.items()})
        yield loss
