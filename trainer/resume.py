"""What lets a run stop anywhere and continue exactly: the data position, per-rank state, and
checkpoint files written atomically.

A checkpoint's `resume` entry says where the run is: `epoch` (the last epoch completed) and
`batch` (optimizer steps already taken in the next one; 0 at an epoch boundary). The data order
of an epoch depends only on the seed and the epoch number (`EpochSampler`; TBPTT rows are fixed),
so a resumed run skips `batch` batches of that order and sees what an uninterrupted run would
have seen next. What differs per rank (its random-number generators, the recurrent state that
truncated BPTT carries between chunks) is gathered from every rank into rank 0's checkpoint.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sized
from pathlib import Path
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


def rank_state(tbptt_state: tuple[torch.Tensor, ...] | None) -> dict[str, Any]:
    """This rank's part of a resume: random-number generators and the carried TBPTT state."""
    state: dict[str, Any] = {"cpu_rng": torch.get_rng_state(), "tbptt": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda_rng"] = torch.cuda.get_rng_state()
    if tbptt_state is not None:
        state["tbptt"] = tuple(s.detach().cpu() for s in tbptt_state)
    return state


def gather(obj: Any, world_size: int) -> list[Any]:
    """`obj` of every rank, in rank order (every rank must call this at the same point)."""
    if world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def restore_rank_state(
    state: dict[str, Any], device: torch.device
) -> tuple[torch.Tensor, ...] | None:
    """Put back this rank's generators; return its carried TBPTT state (on `device`) or None."""
    torch.set_rng_state(state["cpu_rng"])
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    if state["tbptt"] is None:
        return None
    return tuple(s.to(device) for s in state["tbptt"])


def check_world_size(resume: dict[str, Any], world_size: int) -> None:
    """A run resumed mid-epoch must have as many ranks as the run that saved it (the shards and
    the token rows are cut per rank); at an epoch boundary any number will do."""
    saved = len(resume.get("ranks", []))
    if resume.get("batch", 0) and saved and saved != world_size:
        raise ValueError(
            f"the checkpoint stopped mid-epoch with {saved} workers; resume it with "
            f"--workers {saved} (this run has {world_size})"
        )


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file, flushed and fsynced, then renamed over `path`: a crash
    mid-write leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
