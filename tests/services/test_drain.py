"""Graceful drain: on SIGTERM health turns NOT_SERVING, new calls are refused, a stream in flight
keeps being answered until it ends, and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import start_server


def test_sigterm_lets_the_stream_in_flight_finish(tiny_models: Path) -> None:
    server = start_server(tiny_models, "--grace-seconds", "20")

    async def go() -> dict[str, object]:
        seen: dict[str, object] = {}
        async with aio.insecure_channel(server.target) as channel:
            session = pb_grpc.AutocompleteServiceStub(channel).Session()

            async def answer(text: str) -> str:
                await session.write(pb.SessionRequest(text=text, max_tokens=4))
                while (response := await session.read()).WhichOneof("event") != "final":
                    pass
                return str(pb.FinishReason.Name(response.final.summary.finish_reason))

            seen["before"] = await answer("wea")
            server.process.send_signal(signal.SIGTERM)
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(100):  # the drain starts at once, but asynchronously
                status = (await health.Check(health_pb2.HealthCheckRequest())).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.05)
            seen["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            try:
                stub = pb_grpc.AutocompleteServiceStub(channel)
                [e async for e in stub.Complete(pb.CompleteRequest(text="how", max_tokens=2))]
                seen["new call"] = "OK"
            except aio.AioRpcError as error:
                seen["new call"] = error.code().name
            seen["during drain"] = await answer("weather")
            await session.done_writing()
            seen["end"] = await session.read() is aio.EOF
            seen["code"] = (await session.code()).name
        return seen

    seen = asyncio.run(go())
    output = server.output(timeout=60)
    assert server.process.returncode == 0, output
    assert seen["before"] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
    assert seen["health"] == "NOT_SERVING"
    assert seen["new call"] == grpc.StatusCode.UNAVAILABLE.name
    assert seen["during drain"] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
    assert seen["end"] is True and seen["code"] == "OK"
    assert "recur-serve: stopped" in output


def test_sigterm_ends_open_sessions_with_unavailable(tiny_models: Path) -> None:
    """A session would outlast any grace: after the drain's notice it ends with UNAVAILABLE (its
    client opens a new one elsewhere), not cut when the grace runs out, and the server exits
    long before a 30 s grace with nothing about it in its log but its own lines."""
    server = start_server(tiny_models, "--grace-seconds", "30")

    async def go() -> tuple[str, str, float]:
        async with aio.insecure_channel(server.target) as channel:
            session = pb_grpc.AutocompleteServiceStub(channel).Session()
            await session.write(pb.SessionRequest(text="wea", max_tokens=4))
            while (await session.read()).WhichOneof("event") != "final":
                pass
            signalled = time.perf_counter()
            server.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(session.read(), 20)
            except aio.AioRpcError as error:
                return error.code().name, error.details() or "", time.perf_counter() - signalled
            return "no error", "", time.perf_counter() - signalled

    code, details, waited = asyncio.run(go())
    output = server.output(timeout=60)
    assert (code, details) == (
        "UNAVAILABLE",
        "the server is shutting down; open a new session (another replica)",
    )
    assert waited < 10, "ended after the notice, not at the end of the grace"
    assert server.process.returncode == 0, output
    assert "Traceback" not in output and "Exception not handled" not in output, output
