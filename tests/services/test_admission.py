"""Admission control: beyond the stream limit, RESOURCE_EXHAUSTED at once, with a retry hint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc import aio

from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from services.admission import Admission
from services.errors import ResourceExhausted
from tests.conftest import start_server, stop_server


def test_admission_counts_and_refuses() -> None:
    admission = Admission(2)
    with admission.admit(), admission.admit():
        assert admission.active == 2
        with pytest.raises(ResourceExhausted, match="limit of 2 streams"), admission.admit():
            pass
    assert admission.active == 0


def test_a_full_server_refuses_at_once_and_recovers(tiny_models: Path) -> None:
    server = start_server(tiny_models, "--max-streams", "1")

    async def scenario() -> tuple[grpc.StatusCode, str, dict[str, str], str]:
        async with aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.AutocompleteServiceStub(channel)
            session = stub.Session()  # holds the only place while it is open
            await session.write(pb.SessionRequest(text="weather", max_tokens=3))
            while (await session.read()).WhichOneof("event") != "final":
                pass
            refused = stub.Complete(pb.CompleteRequest(text="how", max_tokens=3), timeout=10)
            with pytest.raises(aio.AioRpcError) as info:
                async for _ in refused:
                    pass
            trailing = dict(await refused.trailing_metadata() or ())
            await session.done_writing()
            while await session.read() is not aio.EOF:
                pass
            events = [e async for e in stub.Complete(pb.CompleteRequest(text="how", max_tokens=3))]
            return (
                info.value.code(),
                info.value.details() or "",
                trailing,
                events[-1].WhichOneof("event"),
            )

    try:
        code, details, trailing, last = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        stop_server(server)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1 streams in flight" in details
    assert trailing.get("retry-after-ms") == "100"
    assert last == "final"  # the place was freed when the session ended
