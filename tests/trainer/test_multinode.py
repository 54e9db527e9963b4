"""Training across Ray nodes, simulated as Ray's own tests do: several raylets on this machine.

A head with no CPUs (it holds the driver and Ray Train's controller, as the RayJob's head pod
does) and two worker nodes of one CPU each, so the two training workers can only meet over
gloo between nodes. Every run is compared with one on a single node of the same seed.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.checkpoint import FILE, load
from trainer.config import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.ray]
RESTORED = re.compile(r"restored (\S+): epoch (\d+) done, batch (\d+)")  # trainer/ray_job.py


def config(root: Path, name: str) -> TrainConfig:
    """125 steps an epoch on each rank (2000 examples, 2 ranks, batch 8), a checkpoint every 10."""
    return TrainConfig(
        task="sentiment", workers=2, epochs=2, batch_size=8, max_train_examples=2000,
        hidden_size=24, embed_dim=16, log_every=1000, diagnose_every=0, checkpoint_every_steps=10,
        max_failures=1, out=str(root / "models"), run_dir=str(root / "runs"), run_name=name,
    )  # fmt: skip


def outcome(bundle: Path, run_dir: Path) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """The run's per-epoch history and the exported model's weights."""
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    weights = load(run_dir / FILE).weights
    assert json.loads((bundle / "manifest.json").read_text())["training"]["workers"] == 2
    return history, weights


def assert_same_run(
    a: tuple[list[Any], dict[str, Any]], b: tuple[list[Any], dict[str, Any]]
) -> None:
    """The tolerance of tests/trainer/test_resume.py: steps and lr equal, valid loss to 1e-5."""
    for x, y in zip(a[0], b[0], strict=True):
        assert x["steps"] == y["steps"] and x["lr"] == pytest.approx(y["lr"])
        assert x["valid_loss"] == pytest.approx(y["valid_loss"], rel=1e-5)
        assert x["valid_accuracy"] == pytest.approx(y["valid_accuracy"], abs=1e-9)
    assert a[1].keys() == b[1].keys()
    assert all(torch.allclose(a[1][k], b[1][k], rtol=1e-5, atol=1e-7) for k in a[1])


@pytest.fixture(scope="module")
def single_node(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], dict[str, Any]]:
    """The reference: the same run on one local Ray node with two CPUs."""
    import ray

    from trainer.cli import run

    root = tmp_path_factory.mktemp("single")
    ray.shutdown()  # a Ray instance an earlier test left connected
    try:
        bundle = run(config(root, "single"))
    finally:
        ray.shutdown()
    assert bundle is not None
    return outcome(bundle, root / "runs" / "single")


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, single_node: object) -> Iterator[Any]:
    """Head (0 CPUs) + two 1-CPU worker nodes, in a temp dir of its own: Ray records the latest
    cluster's address in its temp dir, where another process's plain `ray.init()` would find it."""
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", temp)
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def train_worker_nodes(cluster: Any) -> list[str]:
    """The node of every Ray Train worker actor started so far (dead ones included)."""
    actors = cluster.global_state.actor_table(None).values()
    return sorted(a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == "RayTrainWorker")


def test_two_nodes_train_as_one_node_does(
    cluster: Any, single_node: tuple[list[Any], dict[str, Any]], tmp_path: Path
) -> None:
    from trainer.cli import run

    bundle = run(config(tmp_path, "two-nodes"))
    assert bundle is not None
    nodes = train_worker_nodes(cluster)
    worker_nodes = {n.node_id for n in cluster.worker_nodes}
    assert len(nodes) == 2 and set(nodes) == worker_nodes  # one per worker node, none on the head
    assert_same_run(outcome(bundle, tmp_path / "runs" / "two-nodes"), single_node)


def latest_registered_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint Ray Train's controller has registered, from its snapshot in the
    run's storage (a checkpoint directory can be written before it is registered; a restart
    continues only from a registered one)."""
    try:
        state = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return None
    latest = state.get("latest_checkpoint_result")
    return None if latest is None else str(latest["checkpoint_dir_name"])


def test_a_lost_node_is_replaced_and_the_run_ends_as_if_uninterrupted(
    cluster: Any, single_node: tuple[list[Any], dict[str, Any]], tmp_path: Path
) -> None:
    """The run trains in a thread; this one (Ray starts nodes from the main thread only) waits
    for its first registered checkpoint, SIGKILLs one worker node (raylet and all), and starts
    a replacement node for the worker group to come back on."""
    from trainer.cli import run

    outcomes: list[Path | BaseException | None] = []

    def train() -> None:
        try:
            outcomes.append(run(config(tmp_path, "node-lost")))
        except BaseException as e:  # re-raised below, in the test's thread
            outcomes.append(e)

    run_dir = tmp_path / "runs" / "node-lost"
    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    deadline = time.monotonic() + 600
    while (registered := latest_registered_checkpoint(run_dir)) is None and trainer.is_alive():
        assert time.monotonic() < deadline, "no checkpoint in 10 minutes"
        time.sleep(0.02)
    victim = sorted(cluster.worker_nodes, key=lambda n: n.node_id)[0]
    cluster.remove_node(victim, allow_graceful=False)
    cluster.add_node(num_cpus=1)
    trainer.join(timeout=900)
    assert not trainer.is_alive(), "the run did not finish in 15 minutes"
    (bundle,) = outcomes
    if isinstance(bundle, BaseException):
        raise bundle
    assert bundle is not None
    # Four worker actors: two at the start and two after the restart (Ray Train restarts the
    # whole group), on three nodes: the killed one, the survivor and the replacement.
    nodes = train_worker_nodes(cluster)
    assert victim.node_id in nodes and len(set(nodes)) == 3, nodes
    logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
    lines = [line for f in logs.glob("worker-*.out") for line in f.read_text().splitlines()]
    (restored,) = [m.groups() for m in map(RESTORED.search, lines) if m]  # one restart
    path, epochs_done, batch = Path(restored[0]), int(restored[1]), int(restored[2])
    assert path.parent == run_dir and path.name >= str(registered), (restored, registered)
    assert epochs_done == 0 and 0 < batch < 125, restored
    assert_same_run(outcome(bundle, run_dir), single_node)
