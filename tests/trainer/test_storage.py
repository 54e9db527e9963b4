"""`--run-dir` as a path or a URI of Ray Train's storage, and where the workers are placed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from trainer.config import TrainConfig
from trainer.storage import filesystem_and_path, is_uri, publish, staging_dir


@pytest.mark.parametrize(
    ("run_dir", "uri", "reason"),
    [
        ("runs", False, "a relative path"),
        ("/mnt/nfs/runs", False, "an absolute path (a volume every node mounts)"),
        ("./s3:/bucket", False, "a path that only looks like a URI"),
        ("s3://bucket/runs", True, "S3"),
        ("gs://bucket/runs", True, "GCS"),
        ("file:///mnt/nfs/runs", True, "a file URI"),
    ],
)
def test_which_run_dirs_are_uris(run_dir: str, uri: bool, reason: str) -> None:
    assert is_uri(run_dir) is uri, reason


def test_a_local_run_dir_is_made_absolute_for_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert filesystem_and_path("runs") == (None, str(tmp_path / "runs"))


@pytest.mark.parametrize(
    ("environ", "endpoint", "scheme", "reason"),
    [
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, "127.0.0.1:9000", "http", "MinIO, moto"),
        ({"AWS_ENDPOINT_URL_S3": "https://s3.example.com", "AWS_ENDPOINT_URL": "http://x:1"},
         "s3.example.com", "https", "the S3-specific variable wins, as in the AWS SDKs"),
        ({"AWS_ENDPOINT_URL": "minio.storage:9000"}, "minio.storage:9000", "https",
         "no scheme: https"),
    ],
)  # fmt: skip
def test_s3_uris_use_the_endpoint_of_the_environment(
    environ: dict[str, str], endpoint: str, scheme: str, reason: str
) -> None:
    filesystem, path = filesystem_and_path("s3://recur/runs/", environ=environ)
    assert isinstance(filesystem, pafs.S3FileSystem), reason
    assert path == "recur/runs"  # storage_filesystem wants the path without its scheme
    sent = filesystem.__reduce__()[1][0]  # what Ray pickles to the controller and workers
    assert (sent["endpoint_override"], sent["scheme"]) == (endpoint, scheme), reason
    assert sent["access_key"] is None  # credentials come from each node's own environment


def test_other_uris_go_to_pyarrow(tmp_path: Path) -> None:
    filesystem, path = filesystem_and_path(f"file://{tmp_path}/runs")
    assert isinstance(filesystem, pafs.LocalFileSystem) and path == f"{tmp_path}/runs"
    with pytest.raises(ValueError, match="no bucket"):
        filesystem_and_path("s3://", environ={})


def test_a_file_uri_run_is_staged_locally_then_published(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/storage"
    staged = staging_dir(uri, "run-1")
    assert not staged.is_relative_to(tmp_path / "storage")
    (staged / "checkpoint.pt").write_bytes(b"weights")
    assert publish(staged, uri, "run-1") == f"{uri}/run-1"
    assert (tmp_path / "storage" / "run-1" / "checkpoint.pt").read_bytes() == b"weights"
    assert not staged.exists()
    local = staging_dir(str(tmp_path / "runs"), "run-2")  # a local run dir is its own stage
    assert local == tmp_path / "runs" / "run-2" and local.is_dir()
    assert publish(local, str(tmp_path / "runs"), "run-2") == str(local)


@pytest.mark.parametrize(
    ("use_gpu", "strategy", "resources", "reason"),
    [
        (False, "SPREAD", {"CPU": 1}, "one CPU worker per node (pod) where there are enough"),
        (True, "PACK", {"CPU": 1, "GPU": 1}, "GPU ranks share a node's NVLink"),
    ],
)
def test_placement_of_the_workers(
    use_gpu: bool, strategy: str, resources: dict[str, int], reason: str
) -> None:
    from trainer.ray_job import scaling_config

    scaling = scaling_config(TrainConfig(task="sentiment", workers=2, use_gpu=use_gpu))
    assert scaling.placement_strategy == strategy, reason
    assert scaling.num_workers == 2 and scaling.resources_per_worker == resources


def test_in_process_runs_refuse_a_uri_run_dir(capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import main

    with pytest.raises(SystemExit):
        main(["--task", "sentiment", "--workers", "0", "--run-dir", "s3://bucket/runs"])
    assert "--run-dir: a URI needs Ray workers" in capsys.readouterr().err


S3_SERVER = Path(__file__).resolve().parents[2] / ".venv" / "s3-server"  # ignored with .venv/


def moto_server() -> Path:
    """moto's S3 server, installed from s3_server.txt into a virtual environment of its own (its
    botocore wants python-dateutil<3, which the project's constraints do not allow)."""
    exe = S3_SERVER / "bin" / "moto_server"
    if not exe.exists():
        requirements = Path(__file__).with_name("s3_server.txt")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(S3_SERVER)], check=True)
            subprocess.run([str(S3_SERVER / "bin" / "pip"), "install", "--quiet",
                            "--disable-pip-version-check", "-r", str(requirements)],
                           check=True, timeout=900)  # fmt: skip
        except (subprocess.SubprocessError, OSError) as e:
            shutil.rmtree(S3_SERVER, ignore_errors=True)
            pytest.skip(f"could not install moto's S3 server ({e})")
    return exe


@pytest.fixture
def s3_uri(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on a real S3 API (moto's server on 127.0.0.1), named by the environment as a
    Kubernetes Secret and ConfigMap would: AWS_ENDPOINT_URL and the AWS credentials."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(moto_server()), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]:
            monkeypatch.setenv(name, value)  # fmt: skip
        admin = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                                  region="us-east-1", allow_bucket_creation=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                admin.create_dir("recur")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield "s3://recur/runs"
    finally:
        server.terminate()
        server.wait(timeout=30)


def s3_listing(uri: str) -> list[str]:
    """Every file under `uri`, relative to it."""
    filesystem, path = filesystem_and_path(uri)
    assert filesystem is not None
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(f.path.removeprefix(path + "/") for f in found if f.type == pafs.FileType.File)


@pytest.mark.slow
@pytest.mark.ray
def test_a_run_in_s3_checkpoints_resumes_and_re_exports(
    s3_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from services.bundle import verify
    from trainer import export_cli
    from trainer.cli import run

    monkeypatch.chdir(tmp_path)  # nothing may land in a local directory named after the URI
    ray.shutdown()  # Ray must start after the AWS_* variables are set: its workers inherit them
    cfg = TrainConfig(
        task="sentiment", workers=2, epochs=1, batch_size=32, max_train_examples=600,
        hidden_size=24, embed_dim=16, log_every=1000, diagnose_every=0, checkpoint_every_steps=4,
        keep_checkpoints=2, out=str(tmp_path / "models"), run_dir=s3_uri, run_name="s3-run",
    )  # fmt: skip
    try:
        first = run(cfg)
        files = s3_listing(f"{s3_uri}/s3-run")
        # 10 steps: step checkpoints at 4 and 8, then the epoch's; Ray kept the epoch's and one.
        assert len({f.split("/")[0] for f in files if f.startswith("checkpoint_2")}) == 2
        assert {"config.json", "tokenizer.json", "checkpoint.pt", "metrics.json"} <= set(files)
        resumed = run(dataclasses.replace(cfg, epochs=2))  # relaunched: resumes from S3
    finally:
        ray.shutdown()
    assert first == tmp_path / "models" / "sentiment" / "1"
    assert resumed == tmp_path / "models" / "sentiment" / "2"
    filesystem, path = filesystem_and_path(f"{s3_uri}/s3-run/metrics.json")
    assert filesystem is not None
    with filesystem.open_input_stream(path) as f:
        history = json.loads(f.read())["history"]
    assert [(m["epoch"], m["steps"]) for m in history] == [(1.0, 10.0), (2.0, 20.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no local run directory
    export_cli.main(["--checkpoint", f"{s3_uri}/s3-run", "--out", str(tmp_path / "exported")])
    again = verify(tmp_path / "exported" / "sentiment" / "1")
    trained = json.loads((resumed / "manifest.json").read_text())["training"]
    assert again.manifest.training.steps == int(trained["steps"]) == 20
    assert dict(again.manifest.training.metrics) == pytest.approx(trained["metrics"])
