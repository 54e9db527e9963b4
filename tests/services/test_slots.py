"""The state-slot pool: zeroed leases, exhaustion, deferred release of slots in a running batch."""

from __future__ import annotations

import numpy as np
import pytest

from services.errors import ResourceExhausted
from services.slots import SlotPool

SHAPES = {"h": ["2", "batch", "3"], "c": ["2", "batch", "3"]}


def test_acquired_slots_are_zeroed_and_distinct() -> None:
    pool = SlotPool(SHAPES, capacity=4)
    first = pool.acquire(2)
    pool.write(first, {"h": np.ones((2, 2, 3)), "c": np.full((2, 2, 3), 2.0)})
    pool.release(first)
    again = pool.acquire(4)
    assert len(set(again.tolist())) == 4
    assert all(not a.any() for a in pool.read(again).values())
    assert pool.used == 4
    assert pool.bytes_per_slot == 2 * 2 * 3 * 4


def test_read_write_and_copy_follow_slot_order() -> None:
    pool = SlotPool(SHAPES, capacity=3)
    slots = pool.acquire(3)
    h = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    pool.write(slots, {"h": h, "c": -h})
    assert np.array_equal(pool.read(slots[::-1])["h"], h[:, ::-1])
    pool.copy(slots[[2, 2, 0]], slots)  # beams 0 and 1 continue beam 2, beam 2 continues beam 0
    assert np.array_equal(pool.read(slots)["h"], h[:, [2, 2, 0]])
    assert np.array_equal(pool.read(slots)["c"], -h[:, [2, 2, 0]])


def test_a_full_pool_refuses_with_resource_exhausted() -> None:
    pool = SlotPool(SHAPES, capacity=2)
    pool.acquire(2)
    with pytest.raises(ResourceExhausted, match="no free state slot: 2 of 2"):
        pool.acquire()


def test_a_slot_released_mid_batch_is_freed_when_the_batch_lands() -> None:
    pool = SlotPool(SHAPES, capacity=1)
    slots = pool.acquire()
    pool.pin(slots)
    pool.release(slots)  # the stream was cancelled while its step ran
    with pytest.raises(ResourceExhausted):
        pool.acquire()
    pool.unpin(slots)
    assert pool.used == 0
    assert pool.acquire().tolist() == slots.tolist()
