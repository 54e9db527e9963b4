"""Data-parallel training on a real local Ray cluster (2 workers, gloo, DDP)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pytest

from trainer.config import TrainConfig


@pytest.mark.ray
def test_two_ray_workers_train_and_export(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from trainer.cli import run

    cfg = TrainConfig(
        task="sentiment", workers=2, epochs=2, batch_size=32, max_train_examples=2000,
        out=str(tmp_path / "models"), run_dir=str(tmp_path / "runs"), run_name="ray-test",
        log_every=1000, checkpoint_every_steps=10, keep_checkpoints=2,
    )  # fmt: skip
    bundle = run(cfg)
    assert bundle == tmp_path / "models" / "sentiment" / "1"
    training = json.loads((bundle / "manifest.json").read_text())["training"]
    assert training["workers"] == 2
    # Each rank trains on half the data (the sampler pads to equal shards): same step count.
    assert int(training["steps"]) == 2 * math.ceil(math.ceil(2000 / 2) / 32)
    assert training["metrics"]["valid_accuracy"] > 0.8
    run_dir = tmp_path / "runs" / "ray-test"
    # 32 steps an epoch: step checkpoints at 10, 20, 30 | 40, 50, 60 and one per epoch; of the
    # eight, Ray keeps two: the step ones (not validated) rank last, so the two epochs' remain.
    assert kept_positions(run_dir) == [(1, 0), (2, 0)]

    # Relaunching with the same run name resumes after epoch 2 instead of starting over.
    resumed = run(dataclasses.replace(cfg, epochs=3))
    assert resumed == tmp_path / "models" / "sentiment" / "2"
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [m["epoch"] for m in history] == [1.0, 2.0, 3.0]
    assert history[-1]["steps"] == 3 * math.ceil(math.ceil(2000 / 2) / 32)
    assert len(kept_positions(run_dir)) == 2 and (3, 0) in kept_positions(run_dir)
    # The workers' lines do reach us. Ray's log monitor tails their files and forwards them
    # asynchronously, so on a loaded machine the last ones can come after `run` returned.
    output = captured_until(capfd, "[sentiment] step", seconds=30)
    assert "[sentiment] step" in output
    # Ray Train's placement-group cleaner asks the State API (the dashboard) every second;
    # without one it warned each time, burying the progress lines.
    assert "Failed to query Ray Train Controller" not in output


def captured_until(capfd: pytest.CaptureFixture[str], text: str, *, seconds: float) -> str:
    """Everything captured so far, read again until it holds `text` or `seconds` passed."""
    output = ""
    deadline = time.monotonic() + seconds
    while True:
        captured = capfd.readouterr()
        output += captured.out + captured.err
        if text in output or time.monotonic() > deadline:
            return output
        time.sleep(0.5)


def kept_positions(run_dir: Path) -> list[tuple[int, int]]:
    """(epoch, batch) of every checkpoint Ray kept (checkpoint_<timestamp> directories)."""
    from trainer.checkpoint import FILE, load

    positions = []
    for directory in sorted(run_dir.glob("checkpoint_2*")):
        at = load(directory / FILE).position
        positions.append((at.epoch, at.batch))
    return sorted(positions)


def test_unvalidated_checkpoints_rank_last_with_a_score_json_keeps() -> None:
    """Ray stores the scores of kept checkpoints as JSON in the run's storage and reads them back
    when the run is relaunched: -inf would come back as null."""
    from trainer.ray_job import checkpoint_score

    inside = checkpoint_score({"steps": 10.0}, monitor="valid_loss", mode="min")
    worst = checkpoint_score({"valid_loss": 1e6}, monitor="valid_loss", mode="min")
    assert inside < worst and json.loads(json.dumps(inside, allow_nan=False)) == inside
    assert checkpoint_score({"valid_accuracy": 0.9}, monitor="valid_accuracy", mode="max") == 0.9


def test_a_local_ray_start_that_times_out_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray gives a raylet a fixed 30 s to register; a loaded machine can miss it once. Any other
    start error is raised at once."""
    import ray

    from trainer import ray_job

    calls: list[int] = []

    def init(**kwargs: object) -> None:
        calls.append(int(kwargs["num_cpus"]))  # type: ignore[call-overload]
        if len(calls) == 1:
            raise Exception("The current node timed out during startup. This could happen ...")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    ray_job.start_local_ray(num_cpus=2, runtime_env={})
    assert calls == [2, 2]

    def broken(**kwargs: object) -> None:
        raise ValueError("num_cpus must be positive")

    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(ValueError, match="num_cpus"):
        ray_job.start_local_ray(num_cpus=2, runtime_env={})

    always: list[int] = []

    def never(**kwargs: object) -> None:
        always.append(1)
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", never)
    with pytest.raises(Exception, match="timed out during startup"):
        ray_job.start_local_ray(num_cpus=2, runtime_env={}, attempts=3)
    assert len(always) == 3
