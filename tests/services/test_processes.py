"""`recur-serve --processes N`: several servers on one port (SO_REUSEPORT), one supervisor.

Real processes on real ports: the kernel spreads connections over the children, the parent's
/metrics sums them, SIGTERM drains every child, a child that dies takes the group down, and a
port that another program holds is refused as a single server refuses it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from grpc import aio

from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import ROOT, Server, start_server

CONNECTIONS = 16  # all on one of two processes by chance: 2 in 65,536


def start(models: Path, *extra: str) -> tuple[Server, list[int]]:
    """`recur-serve --processes 2` on free ports, and its children's pids."""
    server = start_server(models, "--processes", "2", *extra)
    found = re.search(r"pids ([\d ]+)\)", server.banner)
    assert found is not None, server.banner
    return server, [int(pid) for pid in found.group(1).split()]


def scrape(url: str) -> dict[str, float]:
    """Every sample of the exposition, keyed by its name and labels as written."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def matching(samples: dict[str, float], name: str, **labels: str) -> dict[str, float]:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return {
        key: value
        for key, value in samples.items()
        if key.split("{")[0] == name and all(w in key for w in wanted)
    }


def test_connections_spread_over_the_processes_and_sigterm_drains_them(tiny_models: Path) -> None:
    server, pids = start(tiny_models)
    process, target, metrics_url = server.process, server.target, server.metrics_url

    async def go() -> tuple[dict[str, float], dict[str, float]]:
        # Each channel its own connection (gRPC Python shares subchannels between channels).
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [aio.insecure_channel(target, options=options) for _ in range(CONNECTIONS)]
        sessions = [pb_grpc.AutocompleteServiceStub(c).Session() for c in channels]
        for session in sessions:
            await session.write(pb.SessionRequest(text="wea", max_tokens=3))
            while (await session.read()).WhichOneof("event") != "final":
                pass
        open_sessions = scrape(metrics_url)  # every session still open, on its own connection
        for session in sessions:
            await session.done_writing()
            assert await session.read() is aio.EOF
        for channel in channels:
            stub = pb_grpc.AutocompleteServiceStub(channel)
            async for response in stub.Complete(pb.CompleteRequest(text="how", max_tokens=3)):
                kind = response.WhichOneof("event")
                if kind != "final":
                    streamed.append(1 if kind == "token" else len(response.tokens.tokens))
        finished = scrape(metrics_url)
        for channel in channels:
            await channel.close()
        return open_sessions, finished

    streamed: list[int] = []  # the tokens of each Complete message

    try:
        open_sessions, finished = asyncio.run(go())
    finally:
        process.send_signal(signal.SIGTERM)
        output = server.output(timeout=60)
    assert process.returncode == 0, output
    assert "recur-serve: stopped" in output

    active = matching(open_sessions, "recur_streams_active", task="autocomplete")
    by_pid = {int(re.search(r'pid="(\d+)"', key).group(1)): v for key, v in active.items()}  # type: ignore[union-attr]
    assert set(by_pid) == set(pids), active
    assert sum(by_pid.values()) == CONNECTIONS and min(by_pid.values()) > 0, by_pid

    # Counters are summed over the processes, without a pid label.
    for rpc in ("Session", "Complete"):
        ok = matching(finished, "recur_requests_total", rpc=rpc, code="OK")
        assert list(ok.values()) == [CONNECTIONS], ok
    # The streams' tokens and message gaps, counted in each stream and added in bulk, read the
    # same through the children's shared files.
    generated = matching(finished, "recur_generated_tokens_total", rpc="Complete")
    assert list(generated.values()) == [sum(streamed)], generated
    gaps = matching(finished, "recur_inter_token_latency_seconds_count", rpc="Complete")
    assert list(gaps.values()) == [len(streamed) - CONNECTIONS], (gaps, streamed)
    loaded = matching(finished, "recur_model_info", task="autocomplete")
    assert list(loaded.values()) == [1.0], loaded

    # Every child is gone, and the port is free again.
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    host, port = target.rsplit(":", 1)
    with socket.socket() as probe:
        probe.bind((host, int(port)))


def test_a_child_that_dies_takes_the_group_down(tiny_models: Path) -> None:
    server, pids = start(tiny_models, "--grace-seconds", "1")
    process = server.process
    os.kill(pids[1], signal.SIGKILL)
    output = server.output(timeout=60)
    assert process.returncode == 1, output
    assert f"process {pids[1]} was killed by SIGKILL; stopping the others" in output
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pids[0]}").exists() and not _zombie(pids[0]):
        assert time.monotonic() < deadline, "the surviving child was not stopped"
        time.sleep(0.1)


def test_a_port_another_program_holds_is_refused(tiny_models: Path) -> None:
    for reuse_port in (False, True):  # even one that would share it (SO_REUSEPORT)
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            result = subprocess.run(
                [sys.executable, "-m", "services.server", "--models", str(tiny_models),
                 "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
                 "--processes", "2"],
                capture_output=True, text=True, cwd=ROOT, timeout=60,
            )  # fmt: skip
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"--port: cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_processes_must_be_positive(tiny_models: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.server", "--models", str(tiny_models), "--processes", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--processes must be >= 1, got 0" in result.stderr


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
