"""`python -m scripts.bench`: tiny scenarios end to end write their JSON, plot and summary.

Each runs the real entry point in a subprocess on the session's tiny bundles (`--models`), with
short loads (`--duration`); only the shape of what is written is checked, never a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def bench(out: Path, models: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    command = [sys.executable, "-m", "scripts.bench", "--quick", "--out", str(out)]
    command += ["--models", str(models), "--duration", "0.5", *flags]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    return result, out


def read(out: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    return data


def check_common(data: dict[str, Any], name: str) -> None:
    assert data["scenario"] == name
    assert data["machine"]["cpu"] and data["machine"]["logical_cores"] >= 1
    assert data["versions"]["onnxruntime"] and data["versions"]["grpcio"]
    assert data["settings"] and data["seconds"] > 0 and data["finished_at"]


def test_ceiling_scenario_writes_rows_transport_plot_and_summary(
    tiny_models: Path, tmp_path: Path
) -> None:
    result, out = bench(tmp_path, tiny_models, "--only", "ceiling")
    assert result.returncode == 0, result.stderr
    data = read(out, "ceiling")
    check_common(data, "ceiling")
    assert data["status"] == "ok"
    assert {(r["graph"], r["batch"]) for r in data["rows"]} == {
        (graph, batch) for graph in ("lm_step", "decoder_step") for batch in (1, 8, 64, 256)
    }
    for row in data["rows"]:
        assert row["ceiling_tokens_per_second"] > 0 and row["best"] in data["settings"]["variants"]
    assert [r["concurrency"] for r in data["transport"]] == [1, 64]
    assert all(r["tokens_per_second"] > 0 for r in data["transport"])
    assert (out / "ceiling.png").read_bytes()[:8] == PNG
    summary = (out / "SUMMARY.md").read_text()
    assert "## Ceiling" in summary and "![ceiling](ceiling.png)" in summary


def test_typing_scenario_writes_latencies_and_its_target(tiny_models: Path, tmp_path: Path) -> None:
    result, out = bench(tmp_path, tiny_models, "--only", "typing")
    assert result.returncode == 0, result.stderr
    data = read(out, "typing")
    check_common(data, "typing")
    assert [r["length"] for r in data["rows"]] == [10, 50, 200]
    for row in data["rows"]:
        assert row["session_ms"] > 0 and row["complete_ms"] > 0 and row["samples"] == 20
    (target,) = data["targets"]
    assert target["goal"] == "<= 1.5x" and target["value"] > 0 and target["met"] in (True, False)
    assert len(data["forward_typing_ms"]) == 199  # keys 1 … 199, typed before the 200th
    assert "target session key-to-first-event" in result.stdout


def test_gpu_scenario_records_a_skip_without_cuda_and_fails_under_gpu(
    tiny_models: Path, tmp_path: Path
) -> None:
    import torch

    result, out = bench(tmp_path, tiny_models, "--only", "gpu")
    assert result.returncode == 0, result.stderr
    data = read(out, "gpu")
    if torch.cuda.is_available():
        assert data["status"] == "ok" and data["rows"]
        return
    assert (data["status"], data["reason"]) == ("skipped", "no CUDA device")
    assert "skipped: no CUDA device" in (out / "SUMMARY.md").read_text()
    result, out = bench(tmp_path, tiny_models, "--only", "gpu", "--gpu")
    assert result.returncode == 1 and read(out, "gpu")["status"] == "failed"


def test_unknown_scenario_is_refused_by_name(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "scripts.bench",
        "--only",
        "ceiling,nope",
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "unknown scenario 'nope'" in result.stderr
