"""Fixtures for tests/deploy: the external tools they drive, skipped with a reason when absent."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Every kustomization a user applies (deploy/README.md), by its path under deploy/k8s.
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod", "training", "training/interactive",
                  "training/object-storage")  # fmt: skip


def _tool(name: str, how: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not on PATH: {how}")
    return path


@pytest.fixture(scope="session")
def kubectl() -> str:
    return _tool("kubectl", "install kubectl (it bundles kustomize) to render deploy/k8s")


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool", "run scripts/ci-deps.sh (Debian package `prometheus`)")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return _tool("prometheus", "run scripts/ci-deps.sh (Debian package `prometheus`)")


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """`kubectl kustomize` output of every kustomization, as lists of objects."""
    out = {}
    for name in KUSTOMIZATIONS:
        result = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / "k8s" / name)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, f"kubectl kustomize {name} failed:\n{result.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a port that was free on 127.0.0.1 a moment ago."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return pick


def wait_http(url: str, *, timeout: float, what: str, accept: tuple[int, ...] = ()) -> bytes:
    """GET `url` until it answers 200 (or a status in `accept`), for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            if error.code in accept:
                return b""
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} answered {url} with {error}") from None
            time.sleep(0.5)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} did not answer {url} in {timeout:g} s: {error}"
                ) from None
            time.sleep(0.5)
