"""Readiness and hot reload: NOT_SERVING until warm; new versions load while streams continue on
the version they started with; a corrupted version is refused while the old one keeps serving."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from services.config import ServeConfig
from services.metrics import ServerMetrics
from services.model import ModelRegistry
from services.reload import Reloader
from services.server import build_server, drain, ready
from tests.conftest import start_server, stop_server


async def _health(channel: aio.Channel, service: str) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def _complete_version(channel: aio.Channel) -> int:
    stub = pb_grpc.AutocompleteServiceStub(channel)
    events = [e async for e in stub.Complete(pb.CompleteRequest(text="how", max_tokens=2))]
    return int(events[-1].final.summary.version)


def test_not_serving_until_models_are_loaded_and_warm(tiny_models: Path) -> None:
    async def go() -> tuple[list[str], grpc.StatusCode, str, list[str], int]:
        cfg = ServeConfig(host="127.0.0.1", port=0, metrics_port=-1)
        metrics = ServerMetrics(CollectorRegistry())
        running = await build_server(cfg, ModelRegistry(), metrics)
        services = ["", "recur.v1.AutocompleteService"]
        async with aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            before = [await _health(channel, s) for s in services]
            try:
                await _complete_version(channel)
                code, details = grpc.StatusCode.OK, ""
            except aio.AioRpcError as error:
                code, details = error.code(), error.details() or ""
            await Reloader(running.engine, tiny_models, ort_threads=1).scan()
            await ready(running, metrics)
            after = [await _health(channel, s) for s in services]
            version = await _complete_version(channel)
        await drain(running, 0)
        return before, code, details, after, version

    before, code, details, after, version = asyncio.run(go())
    assert before == ["NOT_SERVING", "NOT_SERVING"]
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "still loading" in details
    assert after == ["SERVING", "SERVING"]
    assert version == 1


def _new_version(repo: Path, version: int, *, corrupt: bool = False) -> None:
    """Copy version 1 of autocomplete to `version` (atomically, as the trainer's export does)."""
    staging = repo / "autocomplete" / f".staging-{version}"
    shutil.copytree(repo / "autocomplete" / "1", staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    if corrupt:
        graph = staging / manifest["graphs"][0]["file"]
        graph.write_bytes(graph.read_bytes()[:-100])
    staging.rename(repo / "autocomplete" / str(version))


async def _wait_for_versions(stub: pb_grpc.ModelServiceStub, expected: set[int]) -> set[int]:
    deadline = time.monotonic() + 20
    while True:
        models = (await stub.ListModels(pb.ListModelsRequest())).models
        versions = {m.version for m in models if m.name == "autocomplete"}
        if versions == expected or time.monotonic() > deadline:
            return versions
        await asyncio.sleep(0.1)


def test_hot_reload_keeps_streams_on_their_version(tiny_models: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_models / "autocomplete", repo / "autocomplete")
    server = start_server(repo, "--reload-seconds", "0.2")

    async def go() -> dict[str, object]:
        seen: dict[str, object] = {}
        async with aio.insecure_channel(server.target) as channel:
            models = pb_grpc.ModelServiceStub(channel)
            session = pb_grpc.AutocompleteServiceStub(channel).Session()

            async def answer(text: str) -> int:
                await session.write(pb.SessionRequest(text=text, max_tokens=2))
                while (response := await session.read()).WhichOneof("event") != "final":
                    pass
                return int(response.final.summary.version)

            seen["session before"] = await answer("wea")
            _new_version(repo, 2)
            seen["after v2"] = await _wait_for_versions(models, {1, 2})
            seen["session after"] = await answer("weather")
            seen["new stream"] = await _complete_version(channel)
            _new_version(repo, 3, corrupt=True)
            await asyncio.sleep(1.0)  # several scans
            seen["after bad v3"] = await _wait_for_versions(models, {1, 2})
            seen["new stream after bad v3"] = await _complete_version(channel)
            shutil.rmtree(repo / "autocomplete" / "2")
            seen["after removing v2"] = await _wait_for_versions(models, {1})
            seen["new stream after removal"] = await _complete_version(channel)
            await session.done_writing()
        return seen

    try:
        seen = asyncio.run(go())
    finally:
        output = stop_server(server)
    assert seen == {
        "session before": 1,
        "after v2": {1, 2},
        "session after": 1,
        "new stream": 2,
        "after bad v3": {1, 2},
        "new stream after bad v3": 2,
        "after removing v2": {1},
        "new stream after removal": 1,
    }
    refusals = [line for line in output.splitlines() if "refusing bundle" in line]
    assert len(refusals) == 1, "a refused bundle is logged once, not at every scan"
    assert "autocomplete/3" in refusals[0]
