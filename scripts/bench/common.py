"""What every scenario shares: its settings, the machine it ran on, targets, and its JSON file.

A scenario is a function `run(ctx) -> Result`. Its rows are whatever it measured; its targets are
ratios of measurements taken side by side in the same run (absolute numbers on a shared 2-core
machine are noise, ratios mostly are not). `write` stores `<out>/<scenario>.json` with the
machine (CPU model, cores, load), the library versions and the settings next to the numbers.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
PACKAGES = ("onnxruntime", "onnx", "torch", "ray", "grpcio", "numpy", "protobuf", "tokenizers")


@dataclass(frozen=True)
class Context:
    """How this run of the benchmark was asked for.

    Attributes:
        out: Where results, plots and the cached models go.
        quick: The reduced run (`make bench QUICK=1`).
        gpu: `--gpu`: the GPU scenario must find CUDA (else it fails instead of skipping).
        models: A model repository to use instead of the cached benchmark bundles.
        duration: Measured seconds of each load run, overriding the scenario's default.
    """

    out: Path
    quick: bool = False
    gpu: bool = False
    models: Path | None = None
    duration: float | None = None

    def seconds(self, full: float, quick: float) -> float:
        """The measured seconds of one load run."""
        if self.duration is not None:
            return self.duration
        return quick if self.quick else full

    def warmup(self) -> float:
        return min(1.0 if self.quick else 2.0, self.seconds(2.0, 1.0))


@dataclass
class Target:
    """One target of the issue, evaluated on this run's ratio."""

    name: str
    goal: str  # e.g. ">= 4x"
    value: float | None  # the measured ratio (None: could not be measured)
    threshold: float
    higher_is_better: bool = True
    detail: str = ""
    unit: str = "x"  # "x": a ratio shown as 2.50x; "%": a share shown as 42.0%; "ms": 12.3 ms
    failed: str = ""  # why it cannot count (errors, different outputs): missed, whatever the value

    @property
    def met(self) -> bool | None:
        if self.failed:
            return False
        if self.value is None or math.isnan(self.value):
            return None
        if self.higher_is_better:
            return self.value >= self.threshold
        return self.value <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "value": self.value,
            "threshold": self.threshold,
            "met": self.met,
            "detail": self.detail,
            "unit": self.unit,
            "failed": self.failed,
        }


@dataclass
class Result:
    """What a scenario measured."""

    scenario: str
    title: str
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def fail_targets(self, reasons: list[str]) -> None:
        """Any error in a scenario fails every one of its targets: a figure measured beside
        errors, or beside outputs that differ, does not count."""
        if reasons:
            for target in self.targets:
                target.failed = "; ".join(reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "title": self.title,
            "status": self.status,
            "reason": self.reason,
            "machine": machine(),
            "versions": versions(),
            "settings": self.settings,
            "rows": self.rows,
            "targets": [t.to_dict() for t in self.targets],
            "notes": self.notes,
            "seconds": self.seconds,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.extra,
        }


def write(result: Result, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.scenario}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The CPU, its cores, the memory and the load when the scenario finished."""
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory = int(first.split()[1]) * 1024
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "gpu": gpu_name(),
    }


def gpu_name() -> str | None:
    """The first CUDA device's name, without importing torch when it is not loaded yet."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def ray_env() -> dict[str, str]:
    """Environment for `ray.init` in the benchmark: the repository importable by workers, and
    workers at the niceness of every other process. Ray starts its workers at niceness 15, which
    on a machine shared with other work hands their CPU to everyone else: a comparison of
    frameworks, not of scheduling priorities, gives Ray's workers the same priority as Recur's."""
    return {"PYTHONPATH": str(ROOT), "RAY_worker_niceness": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def alternated(items: Sequence[T], index: int) -> list[T]:
    """`items` in order for an even `index` (a round, a pair), reversed for an odd one: each
    side of a side-by-side comparison goes first as often as the other."""
    return list(items) if index % 2 == 0 else list(reversed(items))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def timed_for(fn: Callable[[], object], seconds: float, *, min_runs: int = 5) -> list[float]:
    """Call `fn` for about `seconds` (at least `min_runs` times); each call's duration."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start
