"""scripts/gpu-check.sh, the one call a session with a GPU makes, runs here too: on a machine
without CUDA it must say so and exit 3, never pass for a machine that checked a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device: the script checks it")
def test_without_cuda_the_gpu_check_says_nothing_was_checked(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path / "bench")}
    result = subprocess.run(
        ["scripts/gpu-check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    summary = result.stdout[result.stdout.rindex("== gpu-check summary") :]
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "NO CUDA DEVICE" in summary
    assert "skipped" in summary.splitlines()[2], "the gpu tests were found and skipped"
    assert (tmp_path / "bench" / "gpu.json").is_file(), "the bench scenario ran"
