"""Where a server's time goes: py-spy samples of a running process, summarized by category.

`sample(pid, seconds)` records for `seconds` while the caller drives load, then `summarize`
groups the samples by what the innermost frames are doing (ONNX Runtime, Recur's Python, native
code the event loop runs for gRPC, metrics, waiting) and lists the hottest functions. Sampling
perturbs the server, so a profiled run is never one whose numbers are reported as a measurement.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# (category, test on the stack's frames, innermost last); the first that matches wins.
CATEGORIES: tuple[tuple[str, Any], ...] = (
    ("metrics (prometheus_client, services/metrics.py)",
     lambda f: any("prometheus_client" in x or "services/metrics.py" in x for x in f)),
    ("ONNX Runtime run() (model steps)", lambda f: "onnxruntime" in f[-1]),
    ("numpy (state gather/scatter, log-softmax, argmax)", lambda f: "numpy" in f[-1]),
    ("waiting (executor queue, epoll, idle threads)",
     lambda f: any(k in f[-1] for k in ("thread.py:81", "select", "Thread.run", "wait"))),
    ("native code under the event loop (gRPC Cython message I/O, task switches)",
     lambda f: f[-1].startswith("Handle._run")),
    ("Recur Python (engine, scheduler, servicers, interceptors)",
     lambda f: any("services/" in x for x in f)),
    ("asyncio / grpc.aio Python", lambda f: any("asyncio" in x or "grpc" in x for x in f)),
)  # fmt: skip


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def start(pid: int, seconds: float, path: Path, *, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` into `path` (py-spy raw format); wait on the result."""
    tool = py_spy()
    if tool is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    command = [tool, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(rate)]
    command += ["-f", "raw", "-o", str(path), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(path: Path, *, top: int = 15) -> dict[str, Any]:
    """Share of samples by category and the hottest functions by self time."""
    total = 0
    by_category: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        by_leaf[frames[-1]] += n
        name = next((c for c, test in CATEGORIES if test(frames)), "other")
        by_category[name] += n
    share = {name: n / total for name, n in by_category.most_common()} if total else {}
    hottest = [{"function": f, "share": n / total} for f, n in by_leaf.most_common(top)]
    return {"samples": total, "by_category": share, "hottest_self": hottest}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{summary['samples']} samples"]
    lines += [f"  {share:6.1%}  {name}" for name, share in summary["by_category"].items()]
    lines.append("  hottest functions (self):")
    lines += [f"  {h['share']:6.1%}  {h['function']}" for h in summary["hottest_self"]]
    return "\n".join(lines)
