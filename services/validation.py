"""Validation at the edge: every message names the field and the accepted range."""

from __future__ import annotations

from dataclasses import dataclass

from services.errors import InvalidArgument


@dataclass(frozen=True)
class Limits:
    max_input_chars: int
    max_tokens_limit: int


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
    if value == 0:
        return default
    if not 1 <= value <= limits.max_tokens_limit:
        raise InvalidArgument(
            "max_tokens",
            f"must be in [1, {limits.max_tokens_limit}] (or 0 for the default), got {value}",
        )
    return value


def model_name(value: str) -> str:
    if len(value) > 200 or any(c in value for c in "/\\\x00"):
        raise InvalidArgument("model", f"is not a valid model name: {value[:40]!r}")
    return value
