"""Token-budget batches (`--batch-type tokens`): length-sorted, within budget, the same steps on
every rank, resumable part-way through an epoch."""

from __future__ import annotations

import random

import pytest

from trainer.batches import TokenBatches
from trainer.config import TrainConfig

_rng = random.Random(7)
LENGTHS = [_rng.randint(1, 40) for _ in range(500)]


def batches(rank: int = 0, world: int = 1, *, epoch: int = 0, start: int = 0) -> list[list[int]]:
    sampler = TokenBatches(LENGTHS, max_tokens=120, num_replicas=world, rank=rank, seed=5)
    sampler.start_at(epoch, start)
    assert len(sampler) == sampler.per_rank - start
    return list(sampler)


def padded(batch: list[int]) -> int:
    return len(batch) * max(LENGTHS[i] for i in batch)


def test_every_example_once_per_epoch_within_the_budget() -> None:
    epoch = batches()
    assert sorted(i for batch in epoch for i in batch) == list(range(len(LENGTHS)))
    assert all(padded(b) <= 120 for b in epoch)
    # cut from the length-sorted order: a batch's lengths span at most two adjacent classes
    # where the budget splits one, so padding is a small share of what a random batch has
    waste = sum(padded(b) for b in epoch) / sum(LENGTHS) - 1
    assert waste < 0.1
    shuffled = iter(random.Random(0).sample(range(len(LENGTHS)), len(LENGTHS)))
    same_sizes_at_random = [[next(shuffled) for _ in b] for b in epoch]
    assert sum(padded(b) for b in same_sizes_at_random) / sum(LENGTHS) - 1 > 4 * waste


def test_an_example_longer_than_the_budget_is_a_batch_alone() -> None:
    sampler = TokenBatches([3, 50, 3, 3], max_tokens=8, num_replicas=1, rank=0, seed=0)
    assert sorted(len(b) for b in sampler) == [1, 1, 2] and [1] in list(sampler)


def test_the_same_batches_in_another_order_each_epoch() -> None:
    first, second = batches(epoch=0), batches(epoch=1)
    assert first != second
    assert sorted(map(sorted, first)) == sorted(map(sorted, second))
    assert batches(epoch=1) == second  # the order is a function of seed and epoch


def test_ranks_take_equal_steps_and_cover_every_batch() -> None:
    whole = batches()
    shards = [batches(rank, 3) for rank in range(3)]
    assert len({len(s) for s in shards}) == 1  # the same number of optimizer steps
    assert len(whole) % 3 != 0  # (so some batches are dealt twice to even the ranks out)
    dealt = [sorted(b) for s in shards for b in s]
    assert sorted(map(sorted, whole)) == sorted({tuple(b): b for b in dealt}.values())


def test_start_at_skips_the_batches_already_taken() -> None:
    assert batches(1, 2, epoch=3, start=5) == batches(1, 2, epoch=3)[5:]


def test_token_batches_do_not_apply_to_tbptt() -> None:
    cfg = TrainConfig(task="autocomplete", bptt=16, batch_type="tokens", batch_size=500)
    with pytest.raises(ValueError, match="--batch-type tokens does not apply to --bptt"):
        cfg.validate()
    with pytest.raises(ValueError, match="--batch-type must be one of examples, tokens"):
        TrainConfig(batch_type="sentences").validate()
