"""Retries, deadlines, bearer tokens and TLS of the SDK, against real servers of fakes."""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients import RecurClient, RecurError, RetryPolicy
from protos.recur.v1 import inference_pb2 as pb

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


async def _translate(target: str, text: str, **options: Any) -> list[pb.TranslateResponse]:
    model = options.pop("model", "")
    async with RecurClient(target, **options) as client:
        return [event async for event in client.translate(text, model=model)]


def test_unavailable_twice_then_success_is_retried(
    target: str, attempts: collections.Counter[str]
) -> None:
    text = f"flaky {uuid.uuid4()}"
    events = asyncio.run(_translate(target, text, model="flaky", retry=FAST))
    assert attempts[text] == 3
    assert events[-1].final.text == "le chat noir"


def test_retries_stop_at_max_attempts(target: str, attempts: collections.Counter[str]) -> None:
    text = f"flaky {uuid.uuid4()}"
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
    with pytest.raises(RecurError) as caught:
        asyncio.run(_translate(target, text, model="flaky", retry=policy))
    assert (caught.value.code, caught.value.details) == (grpc.StatusCode.UNAVAILABLE, "warming up")
    assert attempts[text] == 2


def test_server_retry_hint_paces_the_retry(target: str, attempts: collections.Counter[str]) -> None:
    text = f"busy {uuid.uuid4()}"
    started = time.monotonic()
    events = asyncio.run(_translate(target, text, model="busy", retry=FAST))
    assert time.monotonic() - started >= 0.3, "retry-after-ms: 300 replaces the 10 ms backoff"
    assert attempts[text] == 2
    assert events[-1].HasField("final")


def test_stream_that_failed_after_an_event_is_not_sent_again(
    target: str, attempts: collections.Counter[str]
) -> None:
    text = f"broken {uuid.uuid4()}"
    received: list[pb.TranslateResponse] = []

    async def scenario() -> None:
        async with RecurClient(target, retry=FAST) as client:
            async for event in client.translate(text, model="broken"):
                received.append(event)

    with pytest.raises(RecurError) as caught:
        asyncio.run(scenario())
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert [event.token.text for event in received] == ["le"]
    assert attempts[text] == 1


def test_no_backoff_outlasts_the_deadline(
    target: str, attempts: collections.Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 300 ms retry hint past a 200 ms deadline: fail now, without sleeping on it."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        slept.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    text = f"busy {uuid.uuid4()}"
    with pytest.raises(RecurError) as caught:
        asyncio.run(_translate(target, text, model="busy", timeout=0.2, retry=FAST))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [delay for delay in slept if delay > 0.01] == []
    assert attempts[text] == 1


@pytest.mark.parametrize(
    ("failures", "ceiling", "reason"),
    [(1, 0.1, "initial"), (2, 0.2, "doubles"), (4, 0.8, "keeps doubling"), (9, 5.0, "capped")],
)
def test_backoff_is_full_jitter_under_an_exponential_ceiling(
    failures: int, ceiling: float, reason: str
) -> None:
    rng = random.Random(0)
    delays = [RetryPolicy().backoff(failures, hint=None, rng=rng) for _ in range(2000)]
    assert 0 <= min(delays) < ceiling * 0.05, reason
    assert ceiling * 0.95 < max(delays) <= ceiling, reason
    assert RetryPolicy().backoff(failures, hint=1.5, rng=rng) == 1.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, "initial_backoff <= max_backoff"),
        ({"multiplier": 0.5}, "multiplier must be at least 1"),
    ],
)
def test_retry_policy_rejects_nonsense(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)


def test_bearer_token_reaches_the_server(target: str, authorizations: list[str]) -> None:
    async def scenario() -> None:
        async with RecurClient(target, token="s3cret") as client:
            await client.list_models()
        async with RecurClient(target) as client:
            await client.list_models()

    asyncio.run(scenario())
    assert authorizations[-2:] == ["Bearer s3cret", ""]


def test_tls_with_the_servers_self_signed_root(tls_target: str, certificates: Any) -> None:
    events = asyncio.run(
        _translate(tls_target, "x", root_certificates=certificates.server_cert, token="t")
    )
    assert events[-1].final.text == "le chat noir"


def test_mutual_tls_presents_the_client_certificate(mtls_target: str, certificates: Any) -> None:
    options = {
        "root_certificates": certificates.server_cert,
        "client_cert": certificates.client_cert,
        "client_key": certificates.client_key,
    }
    assert asyncio.run(_translate(mtls_target, "x", **options))[-1].HasField("final")


@pytest.mark.parametrize(
    ("server", "root", "client", "reason"),
    [
        ("tls", "client", False, "the server's certificate is not signed by the given root"),
        ("mtls", "server", False, "the server requires a client certificate"),
        ("tls", None, False, "plaintext to a TLS port"),
    ],
)
def test_tls_failures_are_unavailable(
    request: pytest.FixtureRequest,
    certificates: Any,
    server: str,
    root: str | None,
    client: bool,
    reason: str,
) -> None:
    server_target: str = request.getfixturevalue(f"{server}_target")
    roots: dict[str | None, Path | None] = {
        "client": certificates.client_cert,
        "server": certificates.server_cert,
        None: None,
    }
    with pytest.raises(RecurError) as caught:
        asyncio.run(
            _translate(
                server_target,
                "x",
                root_certificates=roots[root],
                timeout=2,
                retry=RetryPolicy(max_attempts=1),
            )
        )
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE, reason


def test_client_cert_without_key_is_refused(certificates: Any) -> None:
    with pytest.raises(ValueError, match="give both or neither"):
        RecurClient("127.0.0.1:1", client_cert=certificates.client_cert)
