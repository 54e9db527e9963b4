"""What the engine streams: plain dataclasses, no protobuf, no gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class FinishReason(Enum):
    STOP = "stop"  # end-of-sequence token, or the whole input was read
    LENGTH = "length"  # max_tokens reached
    SUPERSEDED = "superseded"  # a newer edit arrived in a session


@dataclass(frozen=True)
class TokenEvent:
    """One generated token."""

    index: int
    id: int
    text: str  # what this token adds to the detokenized output
    logprob: float
    # (S,) float32 over the source tokens (translation, when asked for): an array, not a tuple of
    # Python floats, which took 8x the memory while a slow client's tokens waited to be written.
    attention: np.ndarray | tuple[()] = ()


@dataclass(frozen=True)
class RunningLabel:
    """The classifier's belief after one more input token."""

    index: int
    id: int
    text: str
    label: str
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class Suggestion:
    """One suggested completion: from the model's beam search, or from the popular-query index."""

    text: str
    logprob: float  # total log-probability of its tokens (and of its end, when it ended)
    score: float = 0.0  # the ranking score (`popular.rank`); the model alone: `logprob`
    count: int = 0  # times the whole query is in the popular-query index (0: the model's only)


@dataclass(frozen=True)
class Finished:
    """The last event of every stream."""

    reason: FinishReason
    text: str  # translation / completion; for sentiment the label
    input_tokens: int
    output_tokens: int
    model: str
    version: int
    queue_seconds: float
    time_to_first_token_seconds: float
    total_seconds: float
    mean_inter_token_seconds: float = 0.0
    probabilities: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()
    source_tokens: tuple[str, ...] = field(default_factory=tuple)
    suggestions: tuple[Suggestion, ...] = ()


Event = TokenEvent | RunningLabel | Finished
