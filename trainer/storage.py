"""Where runs live: `--run-dir` as a local directory or as a URI of Ray Train's storage.

A local path (`runs`, `/mnt/nfs/runs`) is resolved to an absolute one; on a cluster of several
nodes it must be a volume every node mounts (a ReadWriteMany PVC on Kubernetes). A URI
(`s3://bucket/runs`, `gs://bucket/runs`, `file:///mnt/nfs/runs`) goes to pyarrow's filesystems,
which every node reaches by itself. For `s3://` the endpoint comes from `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL` (MinIO, Ceph, a local S3 server) and the credentials from the usual AWS chain
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` in the environment of every node, e.g. from a
Kubernetes Secret).

Ray Train writes its checkpoints there itself. The driver's own files of a run (config, tokenizer,
metrics, plots, the best checkpoint for `recur-export`) are written to a local staging directory
and copied next to Ray's when the run ends.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # imported where a URI needs it: a local run directory needs no pyarrow
    import pyarrow.fs as pafs

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(run_dir: str) -> bool:
    """True for `scheme://...`; a plain path (relative or absolute) is not a URI."""
    return bool(_URI.match(run_dir))


def s3_filesystem(environ: Mapping[str, str]) -> pafs.S3FileSystem:
    """An S3 filesystem on the endpoint the environment names (none: AWS itself)."""
    import pyarrow.fs as pafs

    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if not endpoint:
        return pafs.S3FileSystem(region=region)
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    return pafs.S3FileSystem(endpoint_override=parts.netloc, scheme=parts.scheme, region=region)


def filesystem_and_path(
    run_dir: str, *, environ: Mapping[str, str] | None = None
) -> tuple[pafs.FileSystem | None, str]:
    """`RunConfig(storage_filesystem=..., storage_path=...)` for `--run-dir`.

    A local path gives (None, its absolute path): Ray's own local storage. A URI gives a pyarrow
    filesystem and the path on it without the scheme (`s3://bucket/runs` -> `bucket/runs`), as
    `storage_filesystem` wants it.
    """
    import pyarrow.fs as pafs

    if not is_uri(run_dir):
        return None, str(Path(run_dir).resolve())
    environ = os.environ if environ is None else environ
    scheme, _, rest = run_dir.partition("://")
    if scheme.lower() == "s3":
        bucket_and_key = rest.strip("/")
        if not bucket_and_key:
            raise ValueError(f"--run-dir {run_dir}: no bucket")
        return s3_filesystem(environ), bucket_and_key
    filesystem, path = pafs.FileSystem.from_uri(run_dir)
    return filesystem, path


def staging_dir(run_dir: str, run_name: str) -> Path:
    """The local directory the driver writes a run's files to: the run's own directory for a
    local `--run-dir`, a fresh temporary one for a URI (see `publish`)."""
    if not is_uri(run_dir):
        path = Path(run_dir) / run_name
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"recur-{run_name}-"))


def publish(staged: Path, run_dir: str, run_name: str) -> str:
    """Copy the staged files of a run next to Ray's checkpoints under a URI `--run-dir` and
    remove the staging directory; return where the run lives."""
    import pyarrow.fs as pafs

    if not is_uri(run_dir):
        return str(staged)
    filesystem, path = filesystem_and_path(run_dir)
    assert filesystem is not None
    target = f"{path.rstrip('/')}/{run_name}"
    filesystem.create_dir(target)
    pafs.copy_files(str(staged), target, destination_filesystem=filesystem)
    shutil.rmtree(staged)
    return f"{run_dir.rstrip('/')}/{run_name}"


def fetch_checkpoint(uri: str, into: Path) -> Path:
    """Download a run's `checkpoint.pt` (`uri` is the run, or the `.pt` file itself) into the
    directory `into`; FileNotFoundError when there is none."""
    import pyarrow.fs as pafs

    filesystem, path = filesystem_and_path(uri)
    assert filesystem is not None
    if not path.endswith(".pt"):
        path = f"{path.rstrip('/')}/checkpoint.pt"
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no checkpoint at {uri}")
    local = into / Path(path).name
    with filesystem.open_input_stream(path) as source, local.open("wb") as target:
        shutil.copyfileobj(source, target)
    return local
