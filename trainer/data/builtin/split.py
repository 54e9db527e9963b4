"""A train/valid pair of example lists, as returned by every built-in corpus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Split(Generic[T]):
    """Training and validation examples; no validation item also occurs in ``train``.

    Attributes:
        train: Training examples (may repeat items, e.g. Zipf-sampled queries).
        valid: Held-out validation examples.
    """

    train: list[T]
    valid: list[T]
