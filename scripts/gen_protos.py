"""Regenerate the Python code of `protos/recur/v1/*.proto` (the one pinned regeneration command).

Run as `make protos` (or `python scripts/gen_protos.py [--out DIR]`). The versions of grpcio-tools
and mypy-protobuf are pinned in `constraints.txt`; `tests/protos/test_regeneration.py` regenerates
into a temporary directory and fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path("protos/recur/v1")


def generate(out: Path) -> list[Path]:
    """Write `*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py` and `*_pb2_grpc.pyi` under `out`."""
    from grpc_tools import protoc  # dev-only dependency, imported on use

    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / PROTO_DIR).glob("*.proto"))
    (out / PROTO_DIR).mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    # The mypy-protobuf plugins live next to this interpreter, which may not be on PATH.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(ROOT / p) for p in protos],
    ]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the messages above")
    finally:
        os.chdir(cwd)
    return sorted((out / PROTO_DIR).glob("*_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repo)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(f"wrote {path}")
    if args.out != ROOT:
        return
    cache = ROOT / PROTO_DIR / "__pycache__"
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
