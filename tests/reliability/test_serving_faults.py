"""Faults while serving: clients that cancel, die or run out of time mid-stream; SIGTERM under
load; SIGKILL and a restart that the SDK's retries carry clients over; new model versions, a
removed one and a bundle still being copied, all under load."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc import aio

from clients.sdk import RecurClient, RecurError, RetryPolicy
from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import ROOT, Server, start_server, stop_server
from tests.reliability.harness import MIB, gauge_sum, health, rss_bytes, wait_for_gauge

LONG = pb.CompleteRequest(text="how", max_tokens=400)  # greedy: no end-of-sequence, 400 steps


@pytest.fixture(scope="module")
def server(tiny_models: Path) -> Iterator[Server]:
    running = start_server(tiny_models, "--max-streams", "12")
    yield running
    stop_server(running)


def _freed(server: Server) -> tuple[float, float]:
    """Streams active and slots used once the server has had time to notice."""
    active = wait_for_gauge(server.metrics_url, "recur_streams_active", 0)
    used = wait_for_gauge(server.metrics_url, "recur_state_slots_used_ratio", 0)
    return active, used


async def _admits(target: str, streams: int) -> int:
    """How many of `streams` concurrent streams the server admits (all of them: no leaked place)."""
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.AutocompleteServiceStub(channel)
        request = pb.CompleteRequest(text="how", max_tokens=2)
        calls = [stub.Complete(request) for _ in range(streams)]
        codes = []
        for call in calls:
            try:
                [event async for event in call]
                codes.append(grpc.StatusCode.OK)
            except aio.AioRpcError as error:
                codes.append(error.code())
    return codes.count(grpc.StatusCode.OK)


def test_cancelled_and_expired_streams_give_everything_back(server: Server) -> None:
    """30 streams of every kind cancelled after their first event, 30 cut by their deadline."""

    async def go() -> collections.Counter[str]:
        seen: collections.Counter[str] = collections.Counter()
        async with aio.insecure_channel(server.target) as channel:
            complete = pb_grpc.AutocompleteServiceStub(channel)
            translate = pb_grpc.TranslationServiceStub(channel)
            for i in range(10):
                calls = [
                    complete.Complete(LONG),
                    translate.Translate(pb.TranslateRequest(text="the dog " * 20, beam_size=4)),
                    complete.Session(),
                ]
                await calls[2].write(pb.SessionRequest(text="weather in", max_tokens=400))
                for call in calls[:2] if i % 2 else calls:
                    await call.read()
                for call in calls:
                    call.cancel()
                    seen["cancelled"] += 1
                for timeout in (0.001, 0.01, 0.05):
                    try:
                        [e async for e in complete.Complete(LONG, timeout=timeout)]
                        seen["finished in time"] += 1
                    except aio.AioRpcError as error:
                        seen[error.code().name] += 1
        return seen

    before = rss_bytes(server.process.pid)
    seen = asyncio.run(go())
    assert seen["cancelled"] == 30 and seen["DEADLINE_EXCEEDED"] >= 20, seen
    assert set(seen) <= {"cancelled", "DEADLINE_EXCEEDED", "finished in time"}, seen
    assert _freed(server) == (0, 0), "every stream ended, every state slot back in its pool"
    assert asyncio.run(_admits(server.target, 12)) == 12, "every admission place is back"
    assert rss_bytes(server.process.pid) - before < 32 * MIB


CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from grpc import aio
    from protos.recur.v1 import inference_pb2 as pb, inference_pb2_grpc as pb_grpc

    async def main():
        channel = aio.insecure_channel(sys.argv[1])
        stub = pb_grpc.AutocompleteServiceStub(channel)
        sessions = [stub.Session() for _ in range(6)]
        for session in sessions:  # each in the middle of a 400-token suggestion
            await session.write(pb.SessionRequest(text="how", max_tokens=400))
            await session.read()
        call = stub.Complete(pb.CompleteRequest(text="how", max_tokens=400))
        await call.read()
        print("streaming", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def test_a_client_killed_mid_stream_leaks_nothing(server: Server) -> None:
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, server.target],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert client.stdout is not None and client.stdout.readline() == "streaming\n"
    assert gauge_sum(server.metrics_url, "recur_streams_active") >= 6, "the sessions are open"
    assert gauge_sum(server.metrics_url, "recur_state_slots_used_ratio") > 0
    client.send_signal(signal.SIGKILL)
    client.wait(10)
    assert _freed(server) == (0, 0)
    assert asyncio.run(_admits(server.target, 12)) == 12


@dataclass
class Load:
    """Closed-loop Complete clients; what each stream ended with."""

    finished: int = 0
    truncated: int = 0  # failed after its first event, or ended without a final event
    streaming: int = 0  # calls that have their first event and have not ended
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    versions: collections.Counter[int] = field(default_factory=collections.Counter)


async def _load(target: str, stop: asyncio.Event, load: Load, request: pb.CompleteRequest) -> None:
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.AutocompleteServiceStub(channel)
        while not stop.is_set():
            events = []
            try:
                async for event in stub.Complete(request, timeout=30):
                    load.streaming += not events
                    events.append(event)
            except aio.AioRpcError as error:
                if events:
                    load.truncated += 1
                else:
                    load.refused[error.code().name] += 1
                    await asyncio.sleep(0.05)
                continue
            finally:
                load.streaming -= bool(events)
            if events[-1].WhichOneof("event") != "final":
                load.truncated += 1
            else:
                load.finished += 1
                load.versions[events[-1].final.summary.version] += 1


async def until(condition: Callable[[], bool], what: str, *, within: float = 60.0) -> None:
    """Wait for what a test needs to have happened, instead of sleeping for a time a loaded
    machine may not honour."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {within:g} s"
        await asyncio.sleep(0.05)


def test_sigterm_under_load_truncates_no_stream(tiny_models: Path) -> None:
    server = start_server(tiny_models, "--grace-seconds", "20")
    request = pb.CompleteRequest(text="weather in", max_tokens=60)
    load = Load()

    async def go() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(_load(server.target, stop, load, request)) for _ in range(8)]
        # The 8 clients send the same request, so their streams tend to end together: the
        # signal goes while some stream is under way (checked in the same turn), not between.
        await until(lambda: load.finished > 8 and load.streaming > 0,
                    "9 streams finished, and one under way, before SIGTERM")  # fmt: skip
        load.refused["at SIGTERM"] = load.finished
        server.process.send_signal(signal.SIGTERM)
        await until(lambda: load.refused["UNAVAILABLE"] > 0, "calls refused after SIGTERM")
        stop.set()
        await asyncio.gather(*clients)

    asyncio.run(go())
    output = server.output(timeout=40)
    assert server.process.returncode == 0, output
    finished_before = load.refused.pop("at SIGTERM")
    print(f"SIGTERM under load: {finished_before} streams finished before it, "
          f"{load.finished - finished_before} after, refused {dict(load.refused)}")  # fmt: skip
    assert load.truncated == 0, "every admitted stream finished within the grace period"
    assert finished_before > 8 and load.finished > finished_before
    # Calls that reach the server as it stops listening are CANCELLED before they start
    # (nothing was streamed, nothing truncated); later ones find no listener: UNAVAILABLE.
    assert set(load.refused) <= {"UNAVAILABLE", "CANCELLED"}, load.refused
    assert load.refused["UNAVAILABLE"] > 0, "calls after SIGTERM were refused"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_sigkill_and_restart_the_sdk_carries_clients_over(tiny_models: Path) -> None:
    """The server dies mid-load and comes back on the same port: calls that had not started
    streaming are retried until it is back and succeed; only streams cut mid-way fail."""
    port = _free_port()
    first = start_server(tiny_models, "--port", str(port))
    target = f"127.0.0.1:{port}"
    retry = RetryPolicy(max_attempts=30, initial_backoff=0.1, max_backoff=1.0)
    outcomes: collections.Counter[str] = collections.Counter()

    async def client(stop: asyncio.Event) -> None:
        async with RecurClient(target, timeout=60, retry=retry) as sdk:
            while not stop.is_set():
                events: list[str] = []
                try:
                    async for event in sdk.complete("weather in", max_tokens=30):
                        events.append(event.WhichOneof("event"))
                    outcomes["ok"] += events[-1] == "final"
                except RecurError as error:
                    outcomes[f"{error.code.name} after {'some' if events else 'no'} events"] += 1

    async def go() -> Server:
        stop = asyncio.Event()
        clients = [asyncio.create_task(client(stop)) for _ in range(6)]
        await until(lambda: outcomes["ok"] > 0, "a stream finished before the kill")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        outcomes["ok before the kill"] = outcomes["ok"]
        second = await asyncio.to_thread(start_server, tiny_models, "--port", str(port))
        await until(
            lambda: outcomes["ok"] - outcomes["ok before the kill"] >= 6,
            "6 streams finished on the restarted server",
        )
        stop.set()
        await asyncio.gather(*clients)
        return second

    second = asyncio.run(go())
    try:
        assert health(target) == "SERVING"
    finally:
        stop_server(second)
    failures = {k: v for k, v in outcomes.items() if not k.startswith("ok")}
    print("SIGKILL and restart:", dict(outcomes))
    assert outcomes["ok before the kill"] > 0, outcomes
    assert outcomes["ok"] - outcomes["ok before the kill"] >= 6, "each client carried over"
    assert set(failures) <= {"UNAVAILABLE after some events"}, outcomes
    assert sum(failures.values()) <= 6, "at most the streams in flight at the kill"


def _copy_version(repo: Path, version: int, *, in_place: bool = False) -> Path:
    """Copy autocomplete v1 to `version`: atomically (staging + rename) as the trainer's export
    does, or file by file in place, as `cp -r` would, leaving a torn bundle for a while."""
    source, target = repo / "autocomplete" / "1", repo / "autocomplete" / str(version)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["version"] = version
    staging = target if in_place else repo / "autocomplete" / f".staging-{version}"
    staging.mkdir()
    (staging / "manifest.json").write_text(json.dumps(manifest))
    files = sorted(p for p in source.iterdir() if p.name != "manifest.json")
    for path in files if not in_place else files[:1]:
        shutil.copy(path, staging / path.name)
    if not in_place:
        staging.rename(target)
    return target


def test_versions_come_and_go_under_load_and_a_torn_copy_waits(
    tiny_models: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_models / "autocomplete", repo / "autocomplete")
    server = start_server(repo, "--reload-seconds", "0.2")
    request = pb.CompleteRequest(text="weather in", max_tokens=10)
    load, steps = Load(), []

    async def listed(channel: aio.Channel) -> set[int]:
        models = (await pb_grpc.ModelServiceStub(channel).ListModels(pb.ListModelsRequest())).models
        return {m.version for m in models}

    async def until_listed(channel: aio.Channel, expected: set[int]) -> set[int]:
        deadline = time.monotonic() + 15
        while (seen := await listed(channel)) != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return seen

    async def go() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(_load(server.target, stop, load, request)) for _ in range(6)]
        async with aio.insecure_channel(server.target) as channel:
            await asyncio.sleep(1.0)
            _copy_version(repo, 2)
            steps.append(("v2 arrives", await until_listed(channel, {1, 2})))
            torn = _copy_version(repo, 3, in_place=True)
            await asyncio.sleep(0.6)  # three scans over the torn copy
            steps.append(("torn v3", await listed(channel)))
            for path in sorted((repo / "autocomplete" / "1").iterdir()):
                if not (torn / path.name).exists():
                    shutil.copy(path, torn / path.name)
            steps.append(("v3 complete", await until_listed(channel, {1, 2, 3})))
            shutil.rmtree(repo / "autocomplete" / "1")
            steps.append(("v1 removed", await until_listed(channel, {2, 3})))
            await until(lambda: load.versions[3] > 0, "a stream finished on v3")
        stop.set()
        await asyncio.gather(*clients)

    try:
        asyncio.run(go())
        assert health(server.target) == "SERVING"
    finally:
        output = stop_server(server)
    assert steps == [
        ("v2 arrives", {1, 2}),
        ("torn v3", {1, 2}),
        ("v3 complete", {1, 2, 3}),
        ("v1 removed", {2, 3}),
    ], output[-3000:]
    assert load.truncated == 0 and not load.refused, (load, output[-3000:])
    assert set(load.versions) == {1, 2, 3}, load.versions
    assert "refusing bundle" in output and "autocomplete/3" in output


def test_a_bundle_that_verifies_but_does_not_load_is_refused_and_the_rest_load(
    tiny_models: Path, tmp_path: Path
) -> None:
    """A manifest whose hashes match garbage (rewritten by hand, or by a broken exporter): ONNX
    Runtime cannot parse the graph. The scan refuses that version, once, and goes on to load the
    versions after it; it does not stop the server's start or every later reload."""
    from services.engine import Engine
    from services.model import ModelRegistry
    from services.reload import Reloader

    repo = tmp_path / "repo"
    shutil.copytree(tiny_models / "autocomplete", repo / "autocomplete")
    broken = _copy_version(repo, 2)
    manifest = json.loads((broken / "manifest.json").read_text())
    for name in manifest["sha256"]:
        if name.endswith(".onnx"):
            (broken / name).write_bytes(b"not an onnx graph")
            manifest["sha256"][name] = hashlib.sha256(b"not an onnx graph").hexdigest()
    (broken / "manifest.json").write_text(json.dumps(manifest))
    _copy_version(repo, 3)

    async def go() -> tuple[list[int], list[int]]:
        engine = Engine(ModelRegistry())
        reloader = Reloader(engine, repo, ort_threads=1)
        first = [m.version for m in await reloader.scan()]
        again = [m.version for m in await reloader.scan()]
        engine.close()
        return first, again

    assert asyncio.run(go()) == ([1, 3], [])
