"""The state-slot pool: the recurrent state of every live stream of one model, in one array.

A stream holds one slot (a beam search holds one per beam) for as long as it lives. The
scheduler gathers the slots of a batch into the graph's state inputs and scatters the graph's
state outputs back, so a step costs one copy in and one copy out whatever the batch holds.
An RNN's state does not grow with the text, so the pool is allocated once and never paged.

A slot released while a batch that reads or writes it is still running (the stream was
cancelled mid-step) is freed when that batch lands, so a new stream never sees a stale write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from services.errors import ResourceExhausted

Arrays = dict[str, np.ndarray]


class SlotPool:
    """`capacity` rows of recurrent state, one array per state tensor of the model.

    Args:
        shapes: State input name -> symbolic shape from the manifest, e.g. `["2", "batch", "256"]`.
        capacity: The number of slots.
    """

    def __init__(self, shapes: Mapping[str, Sequence[str]], capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a slot pool needs at least one slot, got {capacity}")
        self.capacity = capacity
        self.axes = {name: list(shape).index("batch") for name, shape in shapes.items()}
        self.arrays: Arrays = {
            name: np.zeros([capacity if d == "batch" else int(d) for d in shape], dtype=np.float32)
            for name, shape in shapes.items()
        }
        self._free = list(range(capacity - 1, -1, -1))  # a stack: recently freed slots are warm
        self._pins = np.zeros(capacity, dtype=np.int32)  # steps queued or running on each slot
        self._doomed: set[int] = set()  # released while pinned; freed at unpin

    @property
    def used(self) -> int:
        return self.capacity - len(self._free)

    @property
    def bytes_per_slot(self) -> int:
        return sum(a.nbytes for a in self.arrays.values()) // self.capacity

    def acquire(self, count: int = 1) -> np.ndarray:
        """`count` free slots, zeroed (the initial state of a recurrent network).

        Raises:
            ResourceExhausted: Fewer than `count` slots are free.
        """
        if count > len(self._free):
            raise ResourceExhausted(
                f"no free state slot: {self.used} of {self.capacity} in use "
                f"(--state-slots); retry later"
            )
        slots = np.array([self._free.pop() for _ in range(count)], dtype=np.int64)
        self.write(slots, {name: 0.0 for name in self.arrays})
        return slots

    def release(self, slots: Iterable[int]) -> None:
        """Give slots back; a slot in a running batch is freed when the batch lands."""
        for slot in (int(s) for s in slots):
            if self._pins[slot]:
                self._doomed.add(slot)
            else:
                self._free.append(slot)

    def pin(self, slots: np.ndarray) -> None:
        np.add.at(self._pins, slots, 1)

    def unpin(self, slots: np.ndarray) -> None:
        np.add.at(self._pins, slots, -1)
        for slot in [s for s in self._doomed if not self._pins[s]]:
            self._doomed.discard(slot)
            self._free.append(slot)

    def read(self, slots: np.ndarray) -> Arrays:
        """A copy of the state of `slots`, batch axis in `slots` order."""
        return {name: np.take(a, slots, axis=self.axes[name]) for name, a in self.arrays.items()}

    def write(self, slots: np.ndarray, values: Mapping[str, np.ndarray | float]) -> None:
        """Set the state of `slots` from arrays whose batch axis is in `slots` order."""
        for name, value in values.items():
            index: list[slice | np.ndarray] = [slice(None)] * self.arrays[name].ndim
            index[self.axes[name]] = slots
            self.arrays[name][tuple(index)] = value

    def copy(self, sources: np.ndarray, targets: np.ndarray) -> None:
        """`targets[i]` takes the state of `sources[i]` (a beam's survivors and their parents)."""
        self.write(targets, self.read(sources))
