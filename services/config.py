"""Server configuration: a frozen dataclass, one `setting(...)` per field (the `settings`
package); defaults < `--config` file < `RECUR_*` environment < flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import settings
from settings import setting


@dataclass(frozen=True)
class ServeConfig:
    # fmt: off
    models: str = setting("models", "the model repository: "
                          "`<models>/<name>/<version>/manifest.json`", metavar="DIR")
    host: str = setting("0.0.0.0", "address the gRPC port listens on")
    port: int = setting(50051, "gRPC port (0: any free port, printed at start)", min=0, max=65535)
    metrics_host: str = setting("0.0.0.0", "address the Prometheus /metrics port listens on")
    metrics_port: int = setting(9464, "Prometheus /metrics port (0: any free port, -1: off)",
                                min=-1, max=65535)
    max_input_chars: int = setting(2000, "longest accepted request text, in characters", min=1)
    max_tokens_limit: int = setting(512, "largest accepted max_tokens of a request", min=1)
    max_streams: int = setting(256, "streams in flight, open sessions included (an idle one "
                               "holds its place until --session-ttl-seconds); beyond them "
                               "RESOURCE_EXHAUSTED at once, with `retry-after-ms`", min=1)
    default_max_tokens: int = setting(32, "tokens an autocomplete request gets when its "
                                      "max_tokens is 0", min=1)
    ort_threads: int = setting(1, "ONNX Runtime intra-op threads per session", min=1)
    graphs: str = setting("optimized", "which copy of each graph to serve: optimized (the "
                          "bundle's ORT-optimized copy), fp32 (as exported) or int8 (the "
                          "quantized copy, when the bundle has one)",
                          choices="services.offline:GRAPHS")
    executor_workers: int = setting(2, "threads running ONNX Runtime calls off the event loop; "
                                    "also the batches of one model in flight at once", min=1)
    grace_seconds: float = setting(10.0, "SIGTERM drains: NOT_SERVING, new calls refused, streams "
                                   "in flight get this many seconds to finish", min=0)
    max_batch_size: int = setting(256, "rows per batched ONNX Runtime call (1: batching off)",
                                  min=1)
    state_slots: int = setting(1024, "recurrent-state slots per model (a stream holds one, a "
                               "beam search one per beam)", min=1)
    prefill_chunk: int = setting(32, "longest piece of a prompt read in one model step", min=1)
    inline_step_ms: float = setting(0.3, "run a model step on the event-loop thread, skipping "
                                    "two thread hand-offs, when that graph's recent steps of that "
                                    "batch size averaged less than this many milliseconds and "
                                    "no other step waits, or less than a hand-off (0.1 ms) "
                                    "whatever waits (0: never)", min=0)
    max_beam_size: int = setting(8, "largest accepted beam_size / num_suggestions of a request",
                                 min=1)
    session_ttl_seconds: float = setting(300.0, "an autocomplete session with no client message "
                                         "and no finished answer for this long ends with "
                                         "DEADLINE_EXCEEDED, whatever its handler is doing",
                                         above=0)
    reload_seconds: float = setting(5.0, "scan the repository for new model versions this often "
                                    "(0: never)", min=0)
    tls_cert_file: str = setting("", "PEM certificate chain of the server (TLS on with "
                                 "--tls-key-file)", metavar="FILE")
    tls_key_file: str = setting("", "PEM private key of --tls-cert-file", metavar="FILE")
    tls_client_ca_file: str = setting("", "require client certificates signed by this CA "
                                      "(mutual TLS)", metavar="FILE")
    auth_token_file: str = setting("", "require `authorization: Bearer <token>` with the token "
                                   "in this file (or in RECUR_AUTH_TOKEN); health stays open",
                                   metavar="FILE")
    health_port: int = setting(-1, "plaintext port serving only grpc.health.v1, for probes when "
                               "TLS is on (-1: off)", min=-1, max=65535)
    max_message_bytes: int = setting(1 << 20, "largest request or response message", min=1)
    keepalive_seconds: float = setting(30.0, "the server pings an idle connection this often",
                                       above=0)
    keepalive_timeout_seconds: float = setting(10.0, "and closes it when the ping is not "
                                               "answered within this", above=0)
    stream_interval: int = setting(1, "tokens per response message after the first, at least (a "
                                   "request's stream_interval overrides it); what a stream "
                                   "produced while its previous message was being written "
                                   "always goes out together", min=1)
    metrics: bool = setting(True, "record Prometheus metrics (--no-metrics: none, to measure "
                            "what recording costs); `recur_inter_token_latency_seconds` is per "
                            "message")
    processes: int = setting(1, "server processes sharing --port (SO_REUSEPORT): the kernel "
                             "spreads client connections over them, each serves its connections "
                             "with its own engine (--max-streams and --state-slots are per "
                             "process), one /metrics for all; one process turns about one core "
                             "into tokens (docs/scaling.md)",
                             min=1)
    # fmt: on

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recur-serve",
        description="Serve every model bundle of a repository over gRPC, streaming per token.",
        epilog="Every flag can also be set in a --config file (TOML, or YAML with pyyaml; keys as "
        "the flags without dashes) or as RECUR_<FLAG> in the environment; flags win over the "
        "environment, the environment over the file.",
    )
    parser.add_argument("--config", default=None, help="a .toml or .yaml file of settings")
    settings.add_arguments(parser, ServeConfig)
    return parser


def resolve(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Parse `argv` over the environment over a `--config` file over the defaults; exits with a
    message naming the flag (or variable, or key) on bad input."""
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    config_file = flags.pop("config")
    try:
        file_values = settings.read_file(ServeConfig, config_file) if config_file else {}
        cfg = settings.resolve(ServeConfig, flags, os.environ if environ is None else environ,
                               file_values)  # fmt: skip
    except ValueError as e:
        parser.error(str(e))
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        parser.error("--tls-cert-file and --tls-key-file come together: give both or neither")
    if cfg.tls_client_ca_file and not cfg.tls_cert_file:
        parser.error("--tls-client-ca-file needs --tls-cert-file and --tls-key-file (TLS)")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_token_file"):
        path = getattr(cfg, name)
        if path and not os.path.isfile(path):
            parser.error(f"--{name.replace('_', '-')} {path!r} is not a readable file")
    return cfg
