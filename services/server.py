"""`recur-serve`: serve every bundle of a model repository over gRPC, with health, reflection and
Prometheus metrics on their own port.

Anatomy: helpers → `build_server(...)` → `async def serve(cfg)` → `main()`.
On SIGTERM or SIGINT the server drains: health turns NOT_SERVING, new calls are refused, and
streams in flight get `grace_seconds` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from services import validation
from services.admission import Admission
from services.config import ServeConfig, resolve
from services.engine import Engine
from services.interceptors import ErrorsAndMetricsInterceptor
from services.metrics import ServerMetrics
from services.model import ModelRegistry
from services.servicers import Servicers

log = logging.getLogger("recur.serve")
SERVICES = {
    "translation": "recur.v1.TranslationService",
    "sentiment": "recur.v1.SentimentService",
    "autocomplete": "recur.v1.AutocompleteService",
}


@dataclass
class Running:
    """A started server and the parts `serve` needs to drain it."""

    server: aio.Server
    health: HealthServicer
    engine: Engine
    port: int


async def build_server(
    cfg: ServeConfig, registry: ModelRegistry, metrics: ServerMetrics
) -> Running:
    """Create, bind and start the gRPC server; health says SERVING for every loaded task."""
    engine = Engine(registry, workers=cfg.executor_workers)
    server = aio.server(
        interceptors=[ErrorsAndMetricsInterceptor(metrics, Admission(cfg.max_streams))],
        # gRPC shares ports by default (SO_REUSEPORT); a second server must fail, not split traffic.
        options=[("grpc.so_reuseport", 0)],
    )
    limits = validation.Limits(cfg.max_input_chars, cfg.max_tokens_limit)
    servicers = Servicers(engine, metrics, limits, default_max_tokens=cfg.default_max_tokens)
    pb_grpc.add_TranslationServiceServicer_to_server(servicers, server)
    pb_grpc.add_SentimentServiceServicer_to_server(servicers, server)
    pb_grpc.add_AutocompleteServiceServicer_to_server(servicers, server)
    pb_grpc.add_ModelServiceServicer_to_server(servicers, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [s.full_name for s in pb.DESCRIPTOR.services_by_name.values()]
    reflection.enable_server_reflection(
        [*names, "grpc.health.v1.Health", reflection.SERVICE_NAME], server
    )
    try:
        port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    except RuntimeError as e:  # grpc reports a failed bind this way
        raise OSError(f"--port: cannot listen on {cfg.host}:{cfg.port} ({e})") from None
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    tasks = {m.task for m in registry.models.values()}
    await health.set("", serving)
    await health.set("recur.v1.ModelService", serving)
    for task, service in SERVICES.items():
        await health.set(service, serving if task in tasks else not_serving)
    for model in registry.models.values():
        metrics.model_info.labels(
            model.name, str(model.version), model.task, model.bundle.manifest.cell
        ).set(1)
    return Running(server=server, health=health, engine=engine, port=port)


async def drain(running: Running, grace: float) -> None:
    """Stop accepting calls and give streams in flight `grace` seconds to finish."""
    await running.health.enter_graceful_shutdown()
    await running.server.stop(grace)
    running.engine.close()


async def serve(cfg: ServeConfig) -> None:
    """Load the repository, serve until SIGTERM/SIGINT, then drain."""
    registry = ModelRegistry.load(Path(cfg.models), threads=cfg.ort_threads)
    if not registry.models:
        log.warning(
            "no valid model bundles under %s; serving health and ListModels only", cfg.models
        )
    metrics = ServerMetrics(CollectorRegistry())
    metrics_port = None
    if cfg.metrics_port >= 0:
        httpd, _ = start_http_server(
            cfg.metrics_port, addr=cfg.metrics_host, registry=metrics.registry
        )
        metrics_port = httpd.server_port
    running = await build_server(cfg, registry, metrics)
    for model in sorted(registry.models.values(), key=lambda m: (m.task, m.name)):
        print(f"recur-serve: {model.task:<12} {model.name} v{model.version} ({model.bundle.path})")
    metrics_url = f"http://{cfg.metrics_host}:{metrics_port}/metrics" if metrics_port else "off"
    print(f"recur-serve: listening on {cfg.host}:{running.port}, metrics {metrics_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"recur-serve: draining (grace {cfg.grace_seconds:g} s)", flush=True)
    await drain(running, cfg.grace_seconds)
    print("recur-serve: stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    cfg = resolve(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info("configuration: %s", cfg.to_json())
    if not Path(cfg.models).is_dir():
        print(f"recur-serve: error: --models {cfg.models!r} is not a directory", file=sys.stderr)
        raise SystemExit(2)
    try:
        asyncio.run(serve(cfg))
    except OSError as e:
        print(f"recur-serve: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
