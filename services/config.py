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
    executor_workers: int = 2  # threads running ONNX Runtime calls off the event loop
    grace_seconds: float = 10.0  # drain time for in-flight streams on SIGTERM

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


_HELP = {
    "models": "model repository to serve",
    "port": "gRPC port (0: any free port)",
    "metrics_port": "Prometheus metrics port (0: any free port, -1: off)",
    "grace_seconds": "seconds in-flight streams get to finish on SIGTERM",
    "max_streams": "streams in flight; beyond them RESOURCE_EXHAUSTED at once",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recur-serve",
        description="Serve every model bundle of a repository over gRPC, streaming per token.",
        epilog="Every flag can also be set as RECUR_<FLAG> in the environment (flags win).",
    )
    for f in fields(ServeConfig):
        kind: Any = {"int": int, "float": float, "str": str}[str(f.type)]
        help_text = _HELP.get(f.name, "") + f" (default: {f.default})"
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, help=help_text)
    return parser


def resolve(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Parse `argv` over the environment over the defaults; exits with a message on bad input."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for f in fields(ServeConfig):
        kind = {"int": int, "float": float, "str": str}[str(f.type)]
        env_name = f"RECUR_{f.name.upper()}"
        if env_name in environ:
            try:
                values[f.name] = kind(environ[env_name])
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
    )
    for name in ("port", *positive):
        if getattr(cfg, name) < (0 if name == "port" else 1):
            parser.error(f"--{name.replace('_', '-')} is out of range: {getattr(cfg, name)}")
    return cfg
