"""What lets a run stop anywhere and continue exactly: the data position and per-rank state.

A checkpoint's `position` says where the run is: `epoch` (the last epoch completed) and `batch`
(optimizer steps already taken in the next one; 0 at an epoch boundary). The data order
of an epoch depends only on the seed and the epoch number (`EpochSampler`; TBPTT rows are fixed),
so a resumed run skips `batch` batches of that order and sees what an uninterrupted run would
have seen next. What differs per rank (its random-number generators, the recurrent state that
truncated BPTT carries between chunks) is gathered from every rank into rank 0's checkpoint.
Saving, finding and loading checkpoints is `trainer/checkpoint.py`'s.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler[int]):
    """A `DistributedSampler` (shuffled by `seed + epoch`, padded to equal shards) that can start
    an epoch part-way: `start` indices of this rank's shard are skipped.

    With one replica its order is `torch.randperm(n)` under `manual_seed(seed + epoch)`, the
    order of a shuffling `DataLoader` whose generator is seeded the same way. Ray Train's
    `prepare_data_loader` keeps it (it replaces only samplers that are not distributed).
    """

    def __init__(
        self, dataset: Sized, *, num_replicas: int, rank: int, seed: int, batch_size: int = 1
    ) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False,
        )  # fmt: skip
        self.start, self.batch_size = 0, batch_size

    def set_position(self, epoch: int, start: int) -> None:
        """Read epoch `epoch` from this rank's `start`-th index on."""
        self.set_epoch(epoch)
        self.start = start

    def start_at(self, epoch: int, batches: int) -> None:
        """Read epoch `epoch` after this rank's first `batches` batches of `batch_size`."""
        self.set_position(epoch, batches * self.batch_size)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


@dataclass
class RankState:
    """One rank's part of a resume: its random-number generators and the recurrent state that
    truncated BPTT carries between chunks."""

    cpu_rng: torch.Tensor
    cuda_rng: torch.Tensor | None = None  # when this rank used CUDA
    tbptt: tuple[torch.Tensor, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_rng": self.cpu_rng, "cuda_rng": self.cuda_rng, "tbptt": self.tbptt}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankState:
        tbptt = d["tbptt"]
        return cls(d["cpu_rng"], d["cuda_rng"], None if tbptt is None else tuple(tbptt))


def rank_state(tbptt_state: tuple[torch.Tensor, ...] | None) -> RankState:
    """This rank's generators now, and its carried TBPTT state (on the CPU)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    return RankState(
        cpu_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state() if cuda else None,
        tbptt=None if tbptt_state is None else tuple(s.detach().cpu() for s in tbptt_state),
    )


def gather(obj: Any, world_size: int) -> list[Any]:
    """`obj` of every rank, in rank order (every rank must call this at the same point)."""
    if world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def restore_rank_state(state: RankState, device: torch.device) -> tuple[torch.Tensor, ...] | None:
    """Put back this rank's generators; return its carried TBPTT state (on `device`) or None."""
    torch.set_rng_state(state.cpu_rng)
    if state.cuda_rng is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda_rng, device)
    if state.tbptt is None:
        return None
    return tuple(s.to(device) for s in state.tbptt)
