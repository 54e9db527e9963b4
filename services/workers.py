"""`recur-serve --processes N`: N complete servers on one port, for a machine with the cores.

One server process turns at most one core into streamed tokens: gRPC's Python handlers, the
engine's bookkeeping and the metrics all run on one event loop under one GIL, and ONNX Runtime is
a small part of a token's cost (docs/performance-analysis.md). gRPC's own answer (its
multiprocessing example) is several processes listening on one port with `SO_REUSEPORT`: the
kernel spreads incoming *connections* over them, and each process serves its connections with its
own engine, batches and state slots. A connection, and so every stream and session on it, stays
with one process; a client that opens one channel is served by one process.

The parent process here only supervises:
- it checks that no other program holds the port (a plain bind, as a single server does), then
  keeps it reserved with a `SO_REUSEPORT` socket that never listens, so `--port 0` works too;
- it serves `/metrics` for all of them (prometheus_client's multiprocess mode: every child writes
  its samples to files in a private folder, the parent sums them; `recur_streams_active` keeps a
  `pid` label so an uneven spread shows);
- it says `ready` once every child is ready, forwards SIGTERM/SIGINT to them (each drains as a
  single server does), and exits when they have. If a child dies on its own, the parent stops
  the others and exits 1, so the orchestrator restarts the whole pod rather than leave it short.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue

from services.config import ServeConfig

STOP_EXTRA_SECONDS = 5.0  # after the grace, children still running are killed


def serve_processes(cfg: ServeConfig) -> int:
    """Run `cfg.processes` servers on one port until SIGTERM/SIGINT; the exit status."""
    reserved = [_reserve(cfg.host, cfg.port, "--port")]
    port = reserved[0].getsockname()[1]
    health_port = cfg.health_port
    if cfg.health_port >= 0:
        reserved.append(_reserve(cfg.host, cfg.health_port, "--health-port"))
        health_port = reserved[1].getsockname()[1]
    folder = tempfile.mkdtemp(prefix="recur-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # read by the children's prometheus_client
    try:
        metrics_url = _serve_metrics(cfg, folder)
        child = replace(cfg, port=port, health_port=health_port, metrics_port=-1, processes=1)
        return _supervise(cfg, child, metrics_url, folder)
    finally:
        for sock in reserved:
            sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _reserve(host: str, port: int, flag: str) -> socket.socket:
    """A bound, never listening `SO_REUSEPORT` socket on `port` (0: a free one), after a plain
    bind proved that no other program holds it: sharing a port is for our own processes only."""
    address = host.strip("[]")
    family, kind, proto, _, where = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            probe.bind(where)
        except OSError as e:
            raise OSError(f"{flag}: cannot listen on {host}:{port} ({e.strerror})") from None
        chosen = probe.getsockname()[1]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((where[0], chosen, *where[2:]))
    return sock


def _serve_metrics(cfg: ServeConfig, folder: str) -> str:
    if cfg.metrics_port < 0:
        return "off"
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from services.metrics import serve_metrics

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    port = serve_metrics(registry, port=cfg.metrics_port, host=cfg.metrics_host)
    return f"http://{cfg.metrics_host}:{port}/metrics"


def _supervise(cfg: ServeConfig, child: ServeConfig, metrics_url: str, folder: str) -> int:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads
    ready: Queue[int] = context.Queue()
    children = [
        context.Process(target=_child, args=(child, index, ready), name=f"recur-serve-{index}")
        for index in range(cfg.processes)
    ]
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _SIGNALS}
    try:
        for process in children:
            process.start()
        probes = f", health {cfg.host}:{child.health_port}" if child.health_port >= 0 else ""
        print(
            f"recur-serve: listening on {cfg.host}:{child.port}, metrics {metrics_url}{probes} "
            f"({cfg.processes} processes, pids {' '.join(str(p.pid) for p in children)})",
            flush=True,
        )
        if _wait_ready(children, ready, stop):
            print("recur-serve: ready", flush=True)
        failed = _wait(children, stop)
        if failed is not None:
            ended = _ended(failed.exitcode)
            print(f"recur-serve: process {failed.pid} {ended}; stopping the others", flush=True)
        print(f"recur-serve: draining (grace {cfg.grace_seconds:g} s)", flush=True)
        _stop(children, cfg.grace_seconds + STOP_EXTRA_SECONDS, folder)
        print("recur-serve: stopped", flush=True)
        clean = failed is None and all(p.exitcode == 0 for p in children)
        return 0 if clean else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _wait_ready(children: Sequence[BaseProcess], ready: Queue[int], stop: threading.Event) -> bool:
    """True once every child said it is ready; False if one died or a stop came first."""
    waiting = set(range(len(children)))
    while waiting and not stop.is_set():
        if any(p.exitcode is not None for p in children):
            return False
        try:
            waiting.discard(ready.get(timeout=0.2))
        except Exception:  # queue.Empty: look again
            continue
    return not waiting


def _wait(children: Sequence[BaseProcess], stop: threading.Event) -> BaseProcess | None:
    """Wait for a stop signal (None) or for a child to exit on its own (that child)."""
    sentinels = {p.sentinel: p for p in children}
    while not stop.is_set():
        for sentinel in multiprocessing.connection.wait(list(sentinels), timeout=0.2):
            process = sentinels[sentinel]  # type: ignore[index]
            process.join()  # it has exited: this only collects its status
            return process
    return None


def _ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


def _stop(children: Sequence[BaseProcess], timeout: float, folder: str) -> None:
    """SIGTERM every live child (each drains), wait up to `timeout`, kill what is left."""
    from prometheus_client import multiprocess

    for process in children:
        if process.exitcode is None and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in children:
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid, folder)  # type: ignore[no-untyped-call]


def _child(cfg: ServeConfig, index: int, ready: Queue[int]) -> None:
    """One server of the group (in a spawned process)."""
    import asyncio

    from services.server import Worker, serve

    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s[{index}]: %(message)s",
    )
    try:
        asyncio.run(serve(cfg, worker=Worker(index, lambda: ready.put(index))))
    except OSError as e:
        print(f"recur-serve[{index}]: error: {e}", flush=True)
        raise SystemExit(1) from None
