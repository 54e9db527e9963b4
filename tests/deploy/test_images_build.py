"""The real images, built with `scripts/images.sh` (buildah, no Docker engine) and run with
`buildah run --isolation chroot`: the serving image serves all three tasks to the SDK on the host,
and the training image runs the trainer's dry run. Slow: `make test-slow`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from clients.sdk import RecurClient
from tests.deploy.conftest import ROOT
from tests.deploy.test_deploy_images import read_until

SCRIPT = ROOT / "scripts" / "images.sh"
SERVE_LIMIT_MB = 350
TASK_SERVICES = ("recur.v1.TranslationService", "recur.v1.SentimentService",
                 "recur.v1.AutocompleteService")  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def buildah() -> str:
    missing = [t for t in ("buildah", "podman", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: `make images` installs them (root, "
                    "apt-get), or `scripts/images.sh --install-tools`")  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("building with buildah --isolation chroot and debootstrap needs root here")
    return str(shutil.which("buildah"))


def build(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Build one image with scripts/images.sh and show what it said; its tag in buildah."""
    env = {**os.environ, "RECUR_IMAGE_TOOL": "buildah"}
    result = subprocess.run([str(SCRIPT), name], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=3600)  # fmt: skip
    said = "\n".join(line for line in result.stderr.splitlines() if line.startswith("images:"))
    assert result.returncode == 0, f"{said}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    report(capsys, said)
    (tag,) = re.findall(r"^images: built (\S+) on", said, re.M)
    return f"localhost/{tag}"


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Show lines in the test run's output, past pytest's capture."""
    with capsys.disabled():
        print(f"\n{text}")


def image_config(image: str) -> dict[str, object]:
    out = subprocess.run(["buildah", "inspect", "--type", "image", image],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return dict(json.loads(out)["OCIv1"]["config"])


def image_megabytes(image: str) -> float:
    out = subprocess.run(["podman", "image", "inspect", "-f", "{{.Size}}", image],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return int(out) / 1e6


@contextmanager
def working_container(image: str) -> Iterator[str]:
    name = subprocess.run(["buildah", "from", image], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    # `buildah run` mounts a scratch volume of its own over each VOLUME of the image, hiding a
    # bind mount there; the working container forgets them (the image keeps its VOLUME).
    for volume in image_config(image).get("Volumes") or {}:
        subprocess.run(["buildah", "config", "--volume", f"{volume}-", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def run_in(container: str, *command: str, user: str, timeout: float = 600) -> str:
    result = subprocess.run(
        ["buildah", "run", "--isolation", "chroot", "--user", user, container, "--", *command],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_serve_image_serves_all_tasks_as_uid_10001(
    buildah: str, tiny_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = build("serve", capsys)
    megabytes = image_megabytes(image)
    report(capsys, f"serve image {image}: {megabytes:.0f} MB (limit {SERVE_LIMIT_MB} MB)")
    assert megabytes <= SERVE_LIMIT_MB
    config = image_config(image)
    assert config["User"] == "10001"
    entrypoint = list(config["Entrypoint"])  # type: ignore[call-overload]
    with working_container(image) as container:
        probe = "import importlib.util as u; print([m for m in ('torch', 'ray') if u.find_spec(m)])"
        assert run_in(container, "python", "-c", probe, user="10001").strip() == "[]"
        # The image's entrypoint as its user, the models mounted read-only, the host's network.
        settings = {"RECUR_HOST": "127.0.0.1", "RECUR_PORT": "0",
                    "RECUR_METRICS_HOST": "127.0.0.1", "RECUR_METRICS_PORT": "0"}  # fmt: skip
        server = subprocess.Popen(
            ["buildah", "run", "--isolation", "chroot", "--network", "host", "--user", "10001:0",
             "--volume", f"{tiny_models}:/models:ro",
             *[f"--env={k}={v}" for k, v in settings.items()], container, "--", *entrypoint],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            ready = read_until(server, r"listening on ([\d.]+:\d+), metrics ([^\s,]+)",
                               timeout=120, then="recur-serve: ready")  # fmt: skip
            target, metrics_url = ready.group(1), ready.group(2)
            finals = asyncio.run(stream_each_task(target))
            with urllib.request.urlopen(metrics_url, timeout=10) as response:
                metrics = response.read().decode()
        finally:
            # `buildah run` kills its command on SIGTERM; the server itself drains on one.
            for pid in descendants(server.pid, entrypoint[0]) or [server.pid]:
                os.kill(pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)
    assert finals["translation"].summary.model == "translation"
    assert finals["sentiment"].label in finals["sentiment"].labels
    assert finals["autocomplete"].summary.output_tokens >= 1
    for task in finals:
        assert re.search(rf'recur_requests_total{{[^}}]*task="{task}"[^}}]*}} 1\.0', metrics), task
    assert server.returncode == 0


def descendants(pid: int, name: str) -> list[int]:
    """The processes under `pid` whose command line mentions `name`, but buildah's own."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                todo.append(child)
                try:
                    argv = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if name in argv and not argv.startswith("buildah"):
                    found.append(child)
    return found


async def stream_each_task(target: str) -> dict[str, object]:
    """Health of the server and every task service, then one stream per task: the final events."""
    async with RecurClient(target) as client:
        for service in ("", *TASK_SERVICES):
            assert await client.health(service) == "SERVING", service
        streams = {
            "translation": client.translate("the small black dog sees a red car"),
            "sentiment": client.sentiment("the acting was good"),
            "autocomplete": client.complete("weather in", max_tokens=8),
        }
        finals = {}
        for task, stream in streams.items():
            events = [event async for event in stream]
            assert [e.WhichOneof("event") for e in events][-1] == "final", task
            finals[task] = events[-1].final
        return finals


def test_train_image_runs_the_trainer_dry_run(
    buildah: str, capsys: pytest.CaptureFixture[str]
) -> None:
    image = build("train", capsys)
    report(capsys, f"train image {image}: {image_megabytes(image):.0f} MB")
    config = image_config(image)
    assert config["User"] == "1000"
    with working_container(image) as container:
        versions = "import ray, torch; print(ray.__version__, torch.__version__)"
        ray, torch = run_in(container, "python", "-c", versions, user="1000").split()
        constraints = (ROOT / "constraints.txt").read_text().split()
        assert f"ray=={ray}" in constraints
        assert f"torch=={torch.split('+')[0]}" in constraints
        # KubeRay's command and probes: the venv's `ray`, and wget.
        assert f"version {ray}" in run_in(container, "ray", "--version", user="1000")
        run_in(container, "wget", "--version", user="1000")
        for task in ("translation", "sentiment", "autocomplete"):
            out = run_in(container, "python", "-m", "trainer", "--dry-run", "--task", task,
                         user="1000", timeout=900)  # fmt: skip
            assert f"[{task}] dry run: exported and verified" in out, out[-3000:]
