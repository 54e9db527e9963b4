"""Shared fixtures: tiny trained bundles for the three tasks, and a real `recur-serve` process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from trainer.checkpoint import Checkpoint

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
# Small enough to train in seconds, big enough to learn something.
TINY = {"embed_dim": 16, "hidden_size": 32, "epochs": 1, "max_train_examples": 1500}


def tiny_config(task: str, tmp: Path, **overrides: object) -> object:
    from trainer.config import resolve

    flags = {"task": task, "workers": 0, "out": str(tmp / "models"), "run_dir": str(tmp / "runs")}
    return resolve({**flags, **TINY, "log_every": 1000, **overrides}, environ={})


def untrained_checkpoint(task_name: str, cell: str = "gru") -> Checkpoint:
    """A checkpoint of a small untrained 2-layer model (random weights exercise parity too)."""
    import torch

    from trainer.config import TrainConfig
    from trainer.loop import make_checkpoint
    from trainer.tasks import get_task

    task = get_task(task_name)
    cfg = TrainConfig(
        task=task_name,
        cell=cell,
        embed_dim=16,
        hidden_size=24,
        num_layers=2,
        max_train_examples=200,
    )
    data = task.prepare(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size()).eval()
    return make_checkpoint(task, data, cfg, model, metrics={"valid_loss": 1.0})


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with one tiny bundle per task, trained in-process (no Ray)."""
    from trainer.cli import run

    tmp = tmp_path_factory.mktemp("tiny")
    for task in ("translation", "sentiment", "autocomplete"):
        run(tiny_config(task, tmp))  # type: ignore[arg-type]
    return tmp / "models"


@pytest.fixture(scope="session")
def speaking_models(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundles with an untrained translator in place of the tiny trained one, which ends
    every translation at once: a test comparing translated tokens needs tokens to compare, and
    random weights write them until `max_tokens`. The translator is `untrained_checkpoint`'s
    (seeded), so a test can rebuild the same PyTorch model."""
    import shutil

    from trainer.export import export_checkpoint

    repo = tmp_path_factory.mktemp("speaking")
    for task in ("sentiment", "autocomplete"):
        shutil.copytree(tiny_models / task, repo / task)
    export_checkpoint(untrained_checkpoint("translation"), out=repo, name="translation")
    return repo


@dataclass
class Server:
    process: subprocess.Popen[str]
    target: str
    metrics_url: str
    health_target: str | None = None  # the plaintext health-only port, with --health-port
    banner: str = ""  # the "listening on ..." line
    # What it printed after it was ready, read as it comes: a server whose output nobody read
    # would block on a full pipe, and a test would take that for a hang of the server's own.
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def output(self, timeout: float = 30) -> str:
        """Everything printed after it was ready, once it has exited (waits `timeout` s)."""
        self.process.wait(timeout=timeout)
        if self.reader is not None:
            self.reader.join(timeout=10)
        return "".join(self.lines)


def start_server(models: Path, *extra: str) -> Server:
    """Start `recur-serve` on free ports and wait until it has loaded and warmed its models."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.server", "--models", str(models), "--host", "127.0.0.1",
         "--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    seen, found = [], None
    for line in process.stdout:
        seen.append(line)
        match = re.search(r"listening on ([\d.]+:\d+), metrics ([^\s,]+)", line)
        found = found or match
        if found and line.startswith("recur-serve: ready"):
            probes = re.search(r"health ([\d.]+:\d+)", found.string)
            target, metrics, health = found.group(1), found.group(2), probes and probes.group(1)
            server = Server(process, target, metrics, health, found.string)
            server.reader = threading.Thread(
                target=_read_lines, args=(process.stdout, server.lines), daemon=True
            )
            server.reader.start()
            return server
    raise AssertionError("recur-serve exited before it was ready:\n" + "".join(seen))


def _read_lines(stream: Iterable[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def stop_server(server: Server) -> str:
    server.process.send_signal(signal.SIGTERM)
    return server.output()


@pytest.fixture(scope="session")
def served(tiny_models: Path) -> Iterator[Server]:
    server = start_server(tiny_models)
    yield server
    if server.process.poll() is None:
        stop_server(server)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """PyTorch on one thread for the test: runs compared bit for bit stay so, and tiny models
    gain nothing from a second thread but contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (the ../shared/data folder)")
    return SHARED_DATA
