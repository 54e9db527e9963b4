"""Validation at the edge: every message names the field and the accepted range."""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.decoding import SamplingParams
from services.errors import InvalidArgument

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64


@dataclass(frozen=True)
class Limits:
    max_input_chars: int
    max_tokens_limit: int
    max_beam_size: int = 8


def text(value: str, limits: Limits, *, field: str = "text", allow_empty: bool = False) -> str:
    """A request text: not empty (unless allowed), not longer than the limit, no NUL bytes."""
    if not allow_empty and not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > limits.max_input_chars:
        raise InvalidArgument(
            field, f"must be at most {limits.max_input_chars} characters, got {len(value)}"
        )
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value


def max_tokens(value: int, limits: Limits, *, default: int) -> int:
    """0 selects `default`; otherwise within [1, limit]."""
    return _count("max_tokens", value, limits, default=default, zero="the default")


def min_tokens(value: int, limits: Limits, *, max_tokens: int) -> int:
    """The fewest tokens to produce: 0 (no minimum) to `max_tokens` (0: no `max_tokens` given,
    so up to the limit)."""
    most = max_tokens or limits.max_tokens_limit
    if value > most:
        bound = f"max_tokens ({max_tokens})" if max_tokens else f"the limit ({most})"
        raise InvalidArgument("min_tokens", f"must be at most {bound}, got {value}")
    return value


def stream_interval(value: int, limits: Limits, *, default: int) -> int:
    """Tokens per message after the first: 0 selects `default`; otherwise within [1, limit]."""
    return _count("stream_interval", value, limits, default=default, zero="the server's")


def _count(field: str, value: int, limits: Limits, *, default: int, zero: str) -> int:
    """A token count: 0 selects `default` (`zero` says whose); otherwise within [1, limit]."""
    if value == 0:
        return default
    if not 1 <= value <= limits.max_tokens_limit:
        raise InvalidArgument(
            field, f"must be in [1, {limits.max_tokens_limit}] (or 0 for {zero}), got {value}"
        )
    return value


def model_name(value: str) -> str:
    if len(value) > 200 or any(c in value for c in "/\\\x00"):
        raise InvalidArgument("model", f"is not a valid model name: {value[:40]!r}")
    return value


def in_range(field: str, value: float, low: float, high: float) -> float:
    """`value` within [low, high] and finite, else INVALID_ARGUMENT naming `field`."""
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgument(field, f"must be in [{low:g}, {high:g}], got {value:g}")
    return value


def beam_size(value: int, limits: Limits, *, field: str = "beam_size") -> int:
    """0 and 1 are greedy; at most `max_beam_size`."""
    if not 0 <= value <= limits.max_beam_size:
        raise InvalidArgument(field, f"must be in [0, {limits.max_beam_size}], got {value}")
    return max(value, 1)


def suggestions(value: int, limits: Limits) -> int:
    """0 asks for none; otherwise a beam width of at most `max_beam_size`."""
    return beam_size(value, limits, field="num_suggestions") if value else 0


def sampling(temperature: float, top_k: int, top_p: float, seed: int | None) -> SamplingParams:
    in_range("temperature", temperature, 0.0, 5.0)
    in_range("top_p", top_p, 0.0, 1.0)
    if top_k > 1_000_000:
        raise InvalidArgument("top_k", f"must be at most 1000000 (0: no limit), got {top_k}")
    return SamplingParams(temperature, top_k, top_p or 1.0, seed)


def stop_strings(values: list[str]) -> tuple[str, ...]:
    if len(values) > MAX_STOP_STRINGS:
        raise InvalidArgument("stop", f"must hold at most {MAX_STOP_STRINGS} strings")
    for value in values:
        if not value or len(value) > MAX_STOP_CHARS:
            raise InvalidArgument(
                "stop", f"strings must have 1 to {MAX_STOP_CHARS} characters, got {len(value)}"
            )
        if "\x00" in value:
            raise InvalidArgument("stop", "strings must not contain NUL characters")
    return tuple(values)
