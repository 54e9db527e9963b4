"""`scripts/bench_export.py --quick`: a table, export.json with the machine, and export.png."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_results_and_plot(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "scripts" / "bench_export.py"), "--quick"]
    command += ["--cells", "gru", "--repeats", "5", "--warmup", "1", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    assert "speedup" in result.stdout and "ONNX Runtime >= 2x faster" in result.stdout
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["machine"]["cpu"] and report["machine"]["onnxruntime"]
    assert report["settings"]["torch_threads"] == report["settings"]["ort_intra_op_threads"] == 1
    rows = report["results"]
    assert [(r["cell"], r["graph"], r["batch"]) for r in rows] == [
        ("gru", "lm_step", batch) for batch in (1, 8, 64)
    ]
    for row in rows:
        assert row["torch_us"] > 0 and row["ort_us"] > 0
        assert row["speedup"] == pytest.approx(row["torch_us"] / row["ort_us"])
    assert (tmp_path / "export.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
