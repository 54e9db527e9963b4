"""What a stream was asked to do, validated: plain dataclasses the servicers build from protos."""

from __future__ import annotations

from dataclasses import dataclass, field

from protos.recur.v1 import bundle_pb2
from services.decoding import SamplingParams


@dataclass(frozen=True)
class TranslateParams:
    """Decoding of one translation.

    Attributes:
        max_tokens: Most target tokens; 0 derives it from the source (`max_length_ratio`).
        max_length_ratio: With `max_tokens == 0`, at most `ratio * source tokens + 10` tokens.
        beam_size: 1 is greedy; more keeps that many hypotheses and streams the best at the end.
        length_penalty: GNMT's alpha; 0 ranks beams by total log-probability.
        include_attention: Stream each step's attention over the source (greedy only).
        cap: The server's --max-tokens-limit, which a length derived from the source obeys too.
        min_tokens: The fewest target tokens: no end-of-sequence before this many.
    """

    max_tokens: int = 0
    max_length_ratio: float = 2.0
    beam_size: int = 1
    length_penalty: float = 0.0
    include_attention: bool = False
    cap: int = 0  # 0: none
    min_tokens: int = 0

    def limit(self, source_tokens: int) -> int:
        if self.max_tokens:
            return self.max_tokens
        derived = max(int(self.max_length_ratio * source_tokens) + 10, self.min_tokens)
        return min(derived, self.cap) if self.cap else derived


def translation_defaults(
    decoding: bundle_pb2.DecodingDefaults, *, max_beam_size: int
) -> tuple[int, float]:
    """The beam width and length penalty a translation uses when its request leaves them unset:
    the ones recur-train fit on the validation split (`manifest.decoding`), the width clamped
    to [1, max_beam_size] and the penalty to [0, 2] (the range a request may ask for).
    A manifest without them (older bundles) gives greedy decoding and no penalty."""
    beam = min(max(int(decoding.beam_size), 1), max_beam_size)
    return beam, min(max(float(decoding.length_penalty), 0.0), 2.0)


@dataclass(frozen=True)
class CompleteParams:
    """Decoding of one completion.

    Attributes:
        max_tokens: Most tokens of the streamed completion.
        sampling: Greedy (the default) or sampling settings.
        stop: The completion ends after a token that makes it end with one of these strings.
        suggestions: How many suggestions the final event lists, best first and distinct.
        model_only: Answer from the language model alone, ignoring the model's popular-query
            index (its greedy or sampled completion, and its beam's suggestions).
        min_tokens: The fewest tokens of the streamed completion: neither the end-of-sequence
            token nor a stop string ends it before this many.
    """

    max_tokens: int = 32
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    suggestions: int = 0
    model_only: bool = False
    min_tokens: int = 0
