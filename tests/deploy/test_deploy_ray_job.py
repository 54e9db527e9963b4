"""`ray job submit` of the trainer to a real local Ray head, as the RayJob does on Kubernetes."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import pytest

from services.bundle import verify
from tests.deploy.conftest import ROOT, wait_http

RAY = Path(sys.executable).parent / "ray"


def missing_dashboard_packages() -> list[str]:
    """The requirements of ray[default] (the dashboard and its job server) not installed here."""
    missing = []
    for requirement in metadata.requires("ray") or []:
        name, _, marker = requirement.partition(";")
        if 'extra == "default"' not in marker:
            continue
        dist = re.split(r"[<>=!~\[ ]", name.strip())[0]
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    return sorted(set(missing))


@pytest.fixture
def ray_env() -> dict[str, str]:
    """Token auth on, with a token of this test's own (not ~/.ray/auth_token): the head and the
    `ray job` CLI both read it from the environment."""
    token = secrets.token_hex(16)
    path = f"{RAY.parent}{os.pathsep}{os.environ['PATH']}"  # `python` in the job is this venv's
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": path}


@pytest.fixture
def ray_dashboard(free_port: Callable[[], int], ray_env: dict[str, str]) -> Iterator[str]:
    """A Ray head with the dashboard on 127.0.0.1, stopped by ending its `ray start --block`."""
    if missing := missing_dashboard_packages():
        pytest.skip("`ray job submit` needs the dashboard's job server (ray[default]); missing: "
                    + ", ".join(missing))  # fmt: skip
    port, dashboard = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=ray_env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{dashboard}"
        # 401: the dashboard is up and asks for the token.
        wait_http(f"{url}/api/version", timeout=120, what="the Ray dashboard", accept=(401,))
        yield url
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # only this head's processes, not other Ray clusters
        head.wait(timeout=60)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_trains_and_exports_a_bundle(
    ray_dashboard: str, ray_env: dict[str, str], tmp_path: Path
) -> None:
    # gitignore syntax, anchored: trainer/models/ is code and must travel.
    runtime_env = {"working_dir": str(ROOT), "excludes": ["/models/", "/runs/", "/.venv/"]}
    submit = subprocess.run(
        [str(RAY), "job", "submit", f"--address={ray_dashboard}", "--submission-id=recur-test",
         f"--runtime-env-json={json.dumps(runtime_env)}", "--",
         "python", "-m", "trainer", "--task", "sentiment", "--workers", "1", "--epochs", "1",
         "--max-train-examples", "500", "--out", str(tmp_path / "models"),
         "--run-dir", str(tmp_path / "runs"), "--run-name", "ray-job-test"],
        env=ray_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, log[-4000:]
    status = subprocess.run(
        [str(RAY), "job", "status", f"--address={ray_dashboard}", "recur-test"],
        env=ray_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Job 'recur-test' succeeded" in status.stdout, status.stdout + status.stderr  # SUCCEEDED
    bundle = verify(tmp_path / "models" / "sentiment" / "1")  # hashes and format, as served
    assert bundle.task == "sentiment" and bundle.manifest.training.workers == 1
    assert (tmp_path / "runs" / "ray-job-test").is_dir()
