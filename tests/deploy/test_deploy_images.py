"""The Dockerfiles, without a Docker engine: a lint of their bases, users and entrypoints, and the
serving image's install replayed into a fresh virtual environment that must serve without torch/ray.
(test_images_build.py builds and runs the real images.)
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import tomllib
import venv
from pathlib import Path

import pytest

from clients.sdk import RecurClient

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
CONSTRAINTS = (ROOT / "constraints.txt").read_text().split()
RAY_VERSION = next(line.split("==")[1] for line in CONSTRAINTS if line.startswith("ray=="))
# What pip prints when it cannot reach an index (as opposed to a pin that does not exist).
OFFLINE = (
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|ConnectTimeoutError|Network is unreachable|ProxyError"
    r"|ReadTimeoutError|Could not fetch URL"
)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def args_of(dockerfile: Path, instruction: str) -> list[str]:
    return [args for name, args in instructions(dockerfile) if name == instruction]


@pytest.mark.parametrize(
    "image, base, user, entrypoint, extras",
    [
        ("serve", r"python:3\.11\.\d+-slim-\w+", "10001", "recur-serve", "serve"),
        (
            "train",
            rf"rayproject/ray:{re.escape(RAY_VERSION)}-py311",
            "1000",
            "recur-train",
            "train,cluster",
        ),
    ],
)
def test_dockerfile_lint(image: str, base: str, user: str, entrypoint: str, extras: str) -> None:
    dockerfile = DOCKER / f"{image}.Dockerfile"
    # The base is a build argument (scripts/images.sh may pass a local one); its default is the
    # official image, at an exact tag.
    (from_,) = args_of(dockerfile, "FROM")
    assert from_ == "${BASE_IMAGE}"
    (default,) = [a.split("=", 1)[1] for a in args_of(dockerfile, "ARG") if a.startswith("BASE_")]
    assert re.fullmatch(base, default), f"{image}: base {default!r} is not an exact pinned tag"
    assert args_of(dockerfile, "USER")[-1] == user, "the last USER must be the non-root uid"
    assert json.loads(args_of(dockerfile, "ENTRYPOINT")[-1]) == [entrypoint]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint in scripts
    assert pip_installs(dockerfile) == [["-c", "constraints.txt", f".[{extras}]"]]
    for copy in args_of(dockerfile, "COPY"):
        *sources, _ = [a for a in shlex.split(copy) if not a.startswith("--")]
        assert all((ROOT / s).exists() for s in sources), copy


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of every `pip install` the Dockerfile runs."""
    found = []
    for run in args_of(dockerfile, "RUN"):
        for command in run.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                found.append(words[2:])
    return found


def read_until(
    process: subprocess.Popen[str], pattern: str, timeout: float, *, then: str = "$^"
) -> re.Match[str]:
    """The first stdout line matching `pattern`, then (if given) a line matching `then`,
    each waited for at most `timeout` seconds."""
    lines: queue.Queue[str | None] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: [*map(lines.put, stdout), lines.put(None)], daemon=True).start()
    seen: list[str] = []
    found = None
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if found is None and (match := re.search(pattern, line)):
            found = match
            if then == "$^":
                return found
        elif found is not None and re.search(then, line):
            return found
    raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n" + "".join(seen))


def test_serve_image_install_serves_without_torch_or_ray(tiny_models: Path, tmp_path: Path) -> None:
    """Replay serve.Dockerfile: copy what it COPYs, run its pip install in a fresh venv, serve."""
    dockerfile = DOCKER / "serve.Dockerfile"
    context = tmp_path / "src"
    context.mkdir()
    for copy in args_of(dockerfile, "COPY"):
        *sources, _ = shlex.split(copy)
        for source in sources:
            src, dst = ROOT / source, context / source
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    (install,) = pip_installs(dockerfile)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--retries", "2", *install]  # fmt: skip
    result = subprocess.run(pip, cwd=context, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and re.search(OFFLINE, result.stderr):
        pytest.skip("the package index is unreachable (offline): cannot replay the image's install")
    assert result.returncode == 0, result.stderr[-3000:]
    probe = "import importlib.util as u; print([m for m in ('torch', 'ray') if u.find_spec(m)])"
    absent = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert absent.stdout.strip() == "[]", "the serving image must not contain torch or ray"

    (entrypoint,) = json.loads(args_of(dockerfile, "ENTRYPOINT")[-1])
    settings = {"RECUR_MODELS": str(tiny_models), "RECUR_HOST": "127.0.0.1", "RECUR_PORT": "0",
                "RECUR_METRICS_HOST": "127.0.0.1", "RECUR_METRICS_PORT": "-1"}  # fmt: skip
    server = subprocess.Popen(
        [str(env_dir / "bin" / entrypoint)], cwd=tmp_path, env={**os.environ, **settings},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        listening = r"listening on ([\d.]+:\d+)"
        target = read_until(server, listening, timeout=60, then="recur-serve: ready").group(1)
        final = asyncio.run(last_event(target, "the acting was good"))
        assert final.final.label in ("positive", "negative")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode == 0


async def last_event(target: str, text: str) -> object:
    async with RecurClient(target) as client:
        assert await client.health("recur.v1.SentimentService") == "SERVING"
        return [event async for event in client.sentiment(text)][-1]
