"""How every call of the SDK is made: one deadline, retries before the first event, one error type.

Retries. A call that fails with UNAVAILABLE or RESOURCE_EXHAUSTED *before it produced anything* is
tried again, up to `RetryPolicy.max_attempts` attempts in all, after an exponential backoff with
full jitter: before attempt n+1 the client sleeps a uniformly random time in
[0, min(max_backoff, initial_backoff * multiplier**(n-1))]. A server that knows better can say how
long to wait: an integer number of milliseconds in the trailing metadata key `retry-after-ms`
replaces the jittered backoff for that attempt. A stream that has already produced an event is
never sent again (its tokens would repeat), and no sleep outlasts the call's deadline: the deadline
covers all attempts together, each attempt getting what remains of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import aio

RETRY_AFTER_METADATA_KEY = "retry-after-ms"
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

_Response = TypeVar("_Response")


class RecurError(Exception):
    """A failed call: its gRPC status code and details; str() reads `NOT_FOUND: unknown model 'x'`.

    Attributes:
        code: The gRPC status code.
        details: The human-readable details the server (or the channel) gave.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details


@contextlib.contextmanager
def recur_errors() -> Iterator[None]:
    """Re-raises any `grpc.aio.AioRpcError` raised in the block as a `RecurError`."""
    try:
        yield
    except aio.AioRpcError as error:
        raise RecurError(error.code(), error.details() or "") from error


@dataclass(frozen=True)
class RetryPolicy:
    """When and how soon a failed call is tried again (see the module docstring).

    Attributes:
        max_attempts: Attempts in all, the first included; 1 turns retries off.
        initial_backoff: The ceiling of the first backoff, in seconds.
        max_backoff: The largest ceiling of any backoff, in seconds.
        multiplier: How much the ceiling grows after each failed attempt.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError(
                "backoffs must satisfy 0 <= initial_backoff <= max_backoff, got "
                f"{self.initial_backoff} and {self.max_backoff}"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")

    def backoff(self, failures: int, *, hint: float | None, rng: random.Random) -> float:
        """Seconds to wait after `failures` failed attempts: the server's hint, else full jitter."""
        if hint is not None:
            return hint
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (failures - 1))
        return rng.uniform(0.0, ceiling)


NO_RETRIES = RetryPolicy(max_attempts=1)


def retry_hint(error: aio.AioRpcError) -> float | None:
    """The server's `retry-after-ms` trailing metadata, in seconds; None if absent or malformed."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_METADATA_KEY:
            with contextlib.suppress(ValueError):
                text = value.decode() if isinstance(value, bytes) else value
                return max(0.0, int(text) / 1000)
    return None


class _Attempts:
    """The retry bookkeeping of one call: its deadline, its failures, and whether to go on."""

    def __init__(self, policy: RetryPolicy, timeout: float, rng: random.Random) -> None:
        self.policy = policy
        self.deadline = time.monotonic() + timeout
        self.rng = rng
        self.failures = 0

    def remaining(self) -> float:
        """Seconds left before the call's deadline (at least a millisecond, so grpc fails it)."""
        return max(1e-3, self.deadline - time.monotonic())

    async def pause_or_raise(self, error: aio.AioRpcError) -> None:
        """Sleeps before the next attempt, or raises `error` as a RecurError if none is due."""
        self.failures += 1
        code = error.code()
        if code in RETRYABLE_CODES and self.failures < self.policy.max_attempts:
            delay = self.policy.backoff(self.failures, hint=retry_hint(error), rng=self.rng)
            if time.monotonic() + delay < self.deadline:
                await asyncio.sleep(delay)
                return
        raise RecurError(code, error.details() or "") from error


def one_per_token(response: _Response) -> list[_Response]:
    """A response carrying several tokens (its `tokens` event) as one response per token (a
    `token` event each, the other fields kept); any other response as itself. The server packs
    the tokens that a stream produced while its previous message was being written."""
    descriptor = getattr(response, "DESCRIPTOR", None)
    if descriptor is None or "event" not in descriptor.oneofs_by_name:
        return [response]
    if response.WhichOneof("event") != "tokens":  # type: ignore[attr-defined]
        return [response]
    singles = []
    for item in response.tokens.tokens:  # type: ignore[attr-defined]
        single = type(response)()
        single.CopyFrom(response)  # type: ignore[attr-defined]
        single.token.CopyFrom(item)  # type: ignore[attr-defined]  # clears `tokens`
        singles.append(single)
    return singles


async def stream_call(
    start: Callable[[float], aio.UnaryStreamCall[Any, _Response]],
    *,
    policy: RetryPolicy,
    timeout: float,
    rng: random.Random,
    as_sent: bool = False,
) -> AsyncIterator[_Response]:
    """Yields the responses of a server-streaming call, retrying it until its first response.

    Args:
        start: Starts one attempt with the given timeout in seconds.
        policy: The retry policy.
        timeout: The deadline of the whole call, all attempts included, in seconds.
        rng: The source of the backoff jitter.
        as_sent: Yield each response as it came; by default one carrying several tokens is
            yielded as one response per token (`one_per_token`).

    Raises:
        RecurError: The call failed and no retry was due (or it failed after its first response).
    """
    attempts = _Attempts(policy, timeout, rng)
    while True:
        call = start(attempts.remaining())
        produced = False
        try:
            async for response in call:
                produced = True
                for event in [response] if as_sent else one_per_token(response):
                    yield event
            return
        except aio.AioRpcError as error:
            if produced:
                raise RecurError(error.code(), error.details() or "") from error
            await attempts.pause_or_raise(error)
        finally:
            call.cancel()


async def unary_call(
    invoke: Callable[[float], Awaitable[_Response]],
    *,
    policy: RetryPolicy,
    timeout: float,
    rng: random.Random,
) -> _Response:
    """Returns the response of a unary call, retrying it as the policy says; see `stream_call`.

    Raises:
        RecurError: The call failed and no retry was due.
    """
    attempts = _Attempts(policy, timeout, rng)
    while True:
        try:
            return await invoke(attempts.remaining())
        except aio.AioRpcError as error:
            await attempts.pause_or_raise(error)
