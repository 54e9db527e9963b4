"""The committed generated code is exactly what the pinned `make protos` command produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "protos" / "recur" / "v1"


def test_regeneration_changes_nothing(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_text() for p in (tmp_path / "protos" / "recur" / "v1").iterdir()}
    committed = {p.name: p.read_text() for p in GENERATED.glob("*_pb2*.py*")}
    assert sorted(fresh) == sorted(committed), "generated file set differs: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"out of date, run `make protos` and commit: {stale}"


def test_every_rpc_and_field_is_documented() -> None:
    """Each rpc, message field and enum value has a comment on the line(s) above it."""
    for proto in GENERATED.glob("*.proto"):
        lines = proto.read_text().splitlines()
        for n, line in enumerate(lines):
            code = line.strip()
            is_field = code.endswith(";") and "=" in code and not code.startswith(("option", "//"))
            if code.startswith("rpc ") or is_field:
                previous = lines[n - 1].strip()
                assert previous.startswith("//"), f"{proto.name}:{n + 1} undocumented: {code}"
