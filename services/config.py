"""Server configuration: a frozen dataclass; defaults < `RECUR_*` environment < flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ServeConfig:
    models: str = "models"  # model repository: <models>/<name>/<version>/manifest.json
    host: str = "0.0.0.0"
    port: int = 50051  # gRPC; 0 picks a free port (printed at start)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9464  # Prometheus /metrics; 0 picks a free port, -1 disables
    max_input_chars: int = 2000  # longest accepted request text
    max_tokens_limit: int = 512  # largest accepted max_tokens
    max_streams: int = 256  # streams in flight; beyond, RESOURCE_EXHAUSTED at once
    default_max_tokens: int = 32  # autocomplete default when max_tokens is 0
    ort_threads: int = 1  # ONNX Runtime intra-op threads per session
    graphs: str = "optimized"  # which copy of each graph: optimized (default), fp32 or int8
    executor_workers: int = 2  # threads running ONNX Runtime calls off the event loop
    grace_seconds: float = 10.0  # drain time for in-flight streams on SIGTERM
    max_batch_size: int = 256  # rows per batched ONNX Runtime call; 1 turns batching off
    state_slots: int = 1024  # recurrent-state slots per model (a stream holds one, a beam more)
    prefill_chunk: int = 32  # longest piece of a prompt read in one step
    inline_step_ms: float = 0.3  # steps known to be shorter run on the event loop; 0: never
    max_beam_size: int = 8  # largest accepted beam_size / num_suggestions
    session_ttl_seconds: float = 300.0  # an autocomplete session idle this long is closed
    reload_seconds: float = 5.0  # how often the repository is scanned for new versions; 0: never
    tls_cert_file: str = ""  # PEM certificate chain; with tls_key_file turns TLS on
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # PEM CA bundle; set, clients must present a certificate (mTLS)
    auth_token_file: str = ""  # file holding the bearer token (or env RECUR_AUTH_TOKEN)
    health_port: int = -1  # plaintext port serving only grpc.health.v1 (probes); -1: off
    max_message_bytes: int = 1 << 20  # largest request or response message
    keepalive_seconds: float = 30.0  # server pings an idle connection this often
    keepalive_timeout_seconds: float = 10.0  # and closes it when the ping is not answered
    stream_interval: int = 1  # tokens per response message after the first, at least
    metrics: bool = True  # record Prometheus metrics (--no-metrics: measure what they cost)
    processes: int = 1  # server processes sharing the port (SO_REUSEPORT), one engine each

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


_HELP = {
    "models": "model repository to serve",
    "port": "gRPC port (0: any free port)",
    "metrics_port": "Prometheus metrics port (0: any free port, -1: off)",
    "grace_seconds": "seconds in-flight streams get to finish on SIGTERM",
    "max_streams": "streams in flight; beyond them RESOURCE_EXHAUSTED at once",
    "graphs": "which copy of each graph to serve: optimized (the bundle's ORT-optimized copy), "
    "fp32 (as exported) or int8 (the quantized copy, when the bundle has one)",
    "max_batch_size": "rows per batched ONNX Runtime call (1: batching off)",
    "state_slots": "recurrent-state slots per model",
    "prefill_chunk": "longest piece of a prompt read in one model step",
    "inline_step_ms": "run a model step on the event-loop thread, skipping two thread hand-offs, "
    "when that graph's recent steps of that batch size averaged less than this (0: never)",
    "session_ttl_seconds": "close autocomplete sessions idle this long",
    "reload_seconds": "scan the repository for new model versions this often (0: never)",
    "tls_cert_file": "PEM certificate chain of the server (TLS on with --tls-key-file)",
    "tls_key_file": "PEM private key of --tls-cert-file",
    "tls_client_ca_file": "require client certificates signed by this CA (mutual TLS)",
    "auth_token_file": "require `authorization: Bearer <token>` with the token in this file "
    "(or in RECUR_AUTH_TOKEN); health stays open",
    "health_port": "plaintext port serving only grpc.health.v1, for probes when TLS is on "
    "(-1: off)",
    "max_message_bytes": "largest request or response message",
    "stream_interval": "tokens per response message after the first, at least (a request's "
    "stream_interval overrides it); what a stream produced while its previous message was being "
    "written always goes out together",
    "processes": "server processes sharing --port (SO_REUSEPORT): the kernel spreads client "
    "connections over them, each serves its connections with its own engine (--max-streams and "
    "--state-slots are per process); one process uses about one core (docs/scaling.md)",
    "metrics": "record Prometheus metrics (--no-metrics turns recording off, to measure its cost)",
}
_KINDS: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _from_env(kind: Any, raw: str) -> Any:
    if kind is not bool:
        return kind(raw)
    if raw.lower() in _TRUE + _FALSE:
        return raw.lower() in _TRUE
    raise ValueError(raw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recur-serve",
        description="Serve every model bundle of a repository over gRPC, streaming per token.",
        epilog="Every flag can also be set as RECUR_<FLAG> in the environment (flags win).",
    )
    for f in fields(ServeConfig):
        kind: Any = _KINDS[str(f.type)]
        help_text = _HELP.get(f.name, "") + f" (default: {f.default})"
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, type=kind, help=help_text)
    return parser


def resolve(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Parse `argv` over the environment over the defaults; exits with a message on bad input."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for f in fields(ServeConfig):
        kind = _KINDS[str(f.type)]
        env_name = f"RECUR_{f.name.upper()}"
        if env_name in environ:
            try:
                values[f.name] = _from_env(kind, environ[env_name])
            except ValueError:
                parser.error(f"{env_name}={environ[env_name]!r} is not a valid {kind.__name__}")
        if args[f.name] is not None:
            values[f.name] = args[f.name]
    cfg = ServeConfig(**values)
    positive = (
        "max_input_chars",
        "max_tokens_limit",
        "max_streams",
        "ort_threads",
        "executor_workers",
        "max_batch_size",
        "state_slots",
        "prefill_chunk",
        "max_beam_size",
        "max_message_bytes",
        "stream_interval",
        "processes",
    )
    above_zero = ("session_ttl_seconds", "keepalive_seconds", "keepalive_timeout_seconds")
    for name in ("port", "reload_seconds", "grace_seconds", "inline_step_ms", *positive,
                 *above_zero):  # fmt: skip
        value = getattr(cfg, name)
        low_ok = value > 0 if name in above_zero else value >= (1 if name in positive else 0)
        if not (low_ok and value < float("inf")):
            parser.error(f"--{name.replace('_', '-')} is out of range: {getattr(cfg, name)}")
    if cfg.graphs not in ("optimized", "fp32", "int8"):
        parser.error(f"--graphs must be optimized, fp32 or int8, got {cfg.graphs!r}")
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        parser.error("--tls-cert-file and --tls-key-file come together: give both or neither")
    if cfg.tls_client_ca_file and not cfg.tls_cert_file:
        parser.error("--tls-client-ca-file needs --tls-cert-file and --tls-key-file (TLS)")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_token_file"):
        path = getattr(cfg, name)
        if path and not os.path.isfile(path):
            parser.error(f"--{name.replace('_', '-')} {path!r} is not a readable file")
    return cfg
