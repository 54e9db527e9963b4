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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc
from services import validation
from services.admission import Admission
from services.auth import BearerToken
from services.config import ServeConfig, resolve
from services.engine import Engine
from services.errors import Unavailable
from services.interceptors import ErrorsAndMetricsInterceptor
from services.metrics import ServerMetrics, serve_metrics
from services.model import LoadedModel, ModelRegistry
from services.reload import Reloader
from services.runtime import EngineConfig
from services.servicers import Servicers

log = logging.getLogger("recur.serve")
DRAIN_NOTICE_SECONDS = 1.0  # NOT_SERVING and refusing new streams before gRPC stops listening
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
    servicers: Servicers
    port: int
    probes: aio.Server | None = None  # the plaintext health-only server, when there is one
    health_port: int | None = None


@dataclass(frozen=True)
class Worker:
    """This server is one of `--processes` sharing a port (see `workers.py`)."""

    index: int
    ready: Callable[[], None]  # tells the supervising parent that this one is ready


def _options(cfg: ServeConfig, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    return [
        # gRPC shares ports by default (SO_REUSEPORT); a second server must fail, not split
        # traffic, unless it is one of our own `--processes` (the parent checked the port).
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.keepalive_time_ms", int(cfg.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients may ping every 10 s without being told off (GOAWAY "too_many_pings").
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _credentials(cfg: ServeConfig) -> grpc.ServerCredentials | None:
    if not cfg.tls_cert_file:
        return None
    client_ca = Path(cfg.tls_client_ca_file).read_bytes() if cfg.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(cfg.tls_key_file).read_bytes(), Path(cfg.tls_cert_file).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _bind(
    server: aio.Server, flag: str, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as e:  # grpc reports a failed bind this way
        raise OSError(f"{flag}: cannot listen on {address} ({e})") from None


async def build_server(
    cfg: ServeConfig, registry: ModelRegistry, metrics: ServerMetrics, *, reuse_port: bool = False
) -> Running:
    """Create, bind and start the gRPC server; every service is NOT_SERVING until `ready`."""
    engine_cfg = EngineConfig(
        max_batch_size=cfg.max_batch_size,
        state_slots=cfg.state_slots,
        prefill_chunk=cfg.prefill_chunk,
        executor_workers=cfg.executor_workers,
        inline_step_ms=cfg.inline_step_ms,
    )
    engine = Engine(
        registry,
        engine_cfg,
        observe=metrics.observe_batch if metrics.recording else None,
        on_slots=metrics.observe_slots if metrics.recording else None,
    )
    engine.ready = False
    auth = BearerToken.configured(cfg.auth_token_file)
    interceptor = ErrorsAndMetricsInterceptor(metrics, Admission(cfg.max_streams), auth)
    server = aio.server(interceptors=[interceptor], options=_options(cfg, reuse_port=reuse_port))
    limits = validation.Limits(cfg.max_input_chars, cfg.max_tokens_limit, cfg.max_beam_size)
    servicers = Servicers(
        engine,
        metrics,
        limits,
        default_max_tokens=cfg.default_max_tokens,
        session_ttl_seconds=cfg.session_ttl_seconds,
        stream_interval=cfg.stream_interval,
    )
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
    port = _bind(server, "--port", f"{cfg.host}:{cfg.port}", _credentials(cfg))
    probes, health_port = None, None
    if cfg.health_port >= 0:
        probes = aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
        health_pb2_grpc.add_HealthServicer_to_server(health, probes)
        health_port = _bind(probes, "--health-port", f"{cfg.host}:{cfg.health_port}", None)
        await probes.start()
    await server.start()
    for name in ("", "recur.v1.ModelService", *SERVICES.values()):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return Running(server, health, engine, servicers, port, probes, health_port)


async def ready(running: Running, metrics: ServerMetrics) -> None:
    """Models are loaded and warm: open the engine and say SERVING for every task served."""
    running.engine.ready = True
    await update_health(running)
    for model in running.engine.registry.models.values():
        model_changed(metrics, model, loaded=True)


async def update_health(running: Running) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    tasks = {m.task for m in running.engine.registry.models.values()}
    await running.health.set("", serving)
    await running.health.set("recur.v1.ModelService", serving)
    for task, service in SERVICES.items():
        await running.health.set(service, serving if task in tasks else not_serving)


def model_changed(metrics: ServerMetrics, model: LoadedModel, *, loaded: bool) -> None:
    labels = (model.name, str(model.version), model.task, model.bundle.manifest.cell)
    metrics.model_info.labels(*labels).set(1 if loaded else 0)


async def drain(running: Running, grace: float) -> None:
    """Stop accepting calls and give streams in flight `grace` seconds to finish.

    For the first `DRAIN_NOTICE_SECONDS` (at most half the grace) the server still listens:
    health says NOT_SERVING and new streams are refused UNAVAILABLE, which clients retry
    elsewhere. Only then does gRPC stop listening; a call that reaches it at that instant can
    be CANCELLED before it starts, and probes that saw NOT_SERVING have stopped calling by then.
    Open sessions, which would outlast any grace, end then too, with UNAVAILABLE: their
    clients open new ones on another replica. Completions and translations in flight finish.
    """
    await running.health.enter_graceful_shutdown()
    running.engine.closing = True
    notice = min(DRAIN_NOTICE_SECONDS, grace / 2)
    await asyncio.sleep(notice)
    running.servicers.end_sessions(
        Unavailable("the server is shutting down; open a new session (another replica)")
    )
    await running.server.stop(grace - notice)
    if running.probes is not None:
        await running.probes.stop(0)
    running.engine.close()


async def serve(cfg: ServeConfig, worker: Worker | None = None) -> None:
    """Bind, load and warm the repository, serve until SIGTERM/SIGINT, then drain.

    As one `worker` of several, the parent has said where it listens and serves the metrics;
    this one tells the parent when it is ready, and only the first lists the models.
    """
    metrics = ServerMetrics(CollectorRegistry(), recording=cfg.metrics)
    metrics_port = None
    if cfg.metrics_port >= 0:
        metrics_port = serve_metrics(metrics.registry, port=cfg.metrics_port, host=cfg.metrics_host)
    running = await build_server(cfg, ModelRegistry(), metrics, reuse_port=worker is not None)
    name = "recur-serve" if worker is None else f"recur-serve[{worker.index}]"
    metrics_url = f"http://{cfg.metrics_host}:{metrics_port}/metrics" if metrics_port else "off"
    probes = f", health {cfg.host}:{running.health_port}" if running.health_port else ""
    if worker is None:
        print(f"{name}: listening on {cfg.host}:{running.port}, metrics {metrics_url}{probes}",
              flush=True)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader = Reloader(
        running.engine,
        Path(cfg.models),
        ort_threads=cfg.ort_threads,
        graphs=cfg.graphs,
        on_change=lambda model, loaded: model_changed(metrics, model, loaded=loaded),
    )
    await reloader.scan()
    if not running.engine.registry.models:
        log.warning(
            "no valid model bundles under %s yet; serving health and ListModels", cfg.models
        )
    await ready(running, metrics)
    if worker is None or worker.index == 0:
        models = sorted(running.engine.registry.models.values(), key=lambda m: (m.task, m.name))
        for m in models:
            print(f"recur-serve: {m.task:<12} {m.name} v{m.version} ({m.bundle.path})")
    if worker is None:
        print("recur-serve: ready", flush=True)
    else:
        worker.ready()
    watcher = None
    if cfg.reload_seconds > 0:
        watcher = asyncio.create_task(_watch(reloader, running, cfg.reload_seconds))
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    if worker is None:
        print(f"{name}: draining (grace {cfg.grace_seconds:g} s)", flush=True)
    await drain(running, cfg.grace_seconds)
    if worker is None:
        print(f"{name}: stopped", flush=True)


async def _watch(reloader: Reloader, running: Running, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await reloader.scan()
            await update_health(running)
        except Exception:  # a scan must never take the server down
            log.exception("model repository scan failed")


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
        if cfg.processes > 1:
            from services.workers import serve_processes

            raise SystemExit(serve_processes(cfg))
        asyncio.run(serve(cfg))
    except OSError as e:
        print(f"recur-serve: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
