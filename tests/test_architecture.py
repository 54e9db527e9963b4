"""The dependency rules of docs/design.md §1, tested rather than written down."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py")
    )


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", ["services", "clients"])
def test_serving_side_loads_without_torch_or_ray(package: str) -> None:
    """Importing every module in a fresh interpreter leaves torch and ray out of sys.modules."""
    names = modules(package)
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'ray', 'trainer', 'numpy', 'services'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(result.stdout))
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "ray", "trainer")}
    if package == "clients":  # clients: grpc, protobuf, protos and the stdlib-only settings
        assert not {m for m in loaded if m.split(".")[0] in ("numpy", "services")}


@pytest.mark.parametrize(
    ("package", "forbidden", "reason"),
    [
        ("trainer", ("clients",), "the trainer never talks to a server"),
        ("services", ("trainer", "torch", "ray"), "the serving image has no torch"),
        ("clients", ("trainer", "services", "torch", "ray", "numpy"), "clients need grpc only"),
    ],
)
def test_import_rules(package: str, forbidden: tuple[str, ...], reason: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        bad = {n for n in imported_names(path) if n.split(".")[0] in forbidden}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: {reason}"


def test_settings_use_the_standard_library_only() -> None:
    """`settings` (one declaration per setting: flags, RECUR_*, config files, checks, docs) is
    shared by the trainer, the services and the clients, so it may import nothing any of them
    must not: the standard library only, and pyyaml only where a YAML config file is read."""
    allowed = set(sys.stdlib_module_names) | {"settings", "_typeshed", "yaml"}  # typing; --config
    for path in (ROOT / "settings").rglob("*.py"):
        bad = {n for n in imported_names(path) if n.split(".")[0] not in allowed}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: shared by every program"


def test_every_program_declares_its_settings_in_one_place() -> None:
    """Issue 17: recur-serve, recur-train and the recur CLI build their flags, RECUR_* variables
    and checks from `settings` declarations; nothing else reads RECUR_* variables by name except
    the server's secret (RECUR_AUTH_TOKEN, never a flag)."""
    readers = sorted(
        str(path.relative_to(ROOT))
        for package in ("services", "trainer", "clients")
        for path in (ROOT / package).rglob("*.py")
        if "settings" in imported_names(path)
    )
    declared = ["clients/cli.py", "services/config.py", "trainer/cli.py", "trainer/config.py"]
    assert readers == declared
    for package in ("services", "trainer", "clients"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert 'environ.get("RECUR_' not in text and 'environ["RECUR_' not in text, path


def test_trainer_uses_only_the_server_free_part_of_services() -> None:
    """docs/design.md §1: the trainer may import services' bundle loading, engine and decoding
    (so that recur-eval measures the code that serves), never anything that needs gRPC or a
    server."""
    server = ["services.server", "services.servicers", "services.interceptors", "services.session"]
    used = sorted(
        {
            n if n in modules("services") else n.rsplit(".", 1)[0]
            for path in (ROOT / "trainer").rglob("*.py")
            for n in imported_names(path)
            if n.split(".")[0] == "services"
        }
    )
    assert "services.offline" in used, "recur-eval runs the serving engine"
    code = (
        "import importlib, json, sys\n"
        f"for name in {used!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' "
        f"or m in {server!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == [], f"{used} load gRPC or the server"


def test_evaluation_runs_the_serving_engine() -> None:
    """Issue 16, one copy of decoding: recur-eval and the export's fits reach a bundle only
    through services' loader and engine (`services.offline`). The trainer has no bundle loader
    of its own: ONNX Runtime appears only where the export checks and optimizes graphs."""
    assert not (ROOT / "trainer" / "ort_bundle.py").exists()
    assert not (ROOT / "trainer" / "completions.py").exists()
    for name in ("evaluate", "ranking", "beam_defaults", "quantize", "eval_cli"):
        used = imported_names(ROOT / "trainer" / f"{name}.py")
        assert "services.offline" in used, f"trainer/{name}.py does not use services.offline"
    onnx_users = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "trainer").rglob("*.py")
        if any(n.split(".")[0] == "onnxruntime" for n in imported_names(path))
    )
    assert onnx_users == ["trainer/export.py", "trainer/optimize.py"]


def test_trainer_never_imports_grpc_stubs() -> None:
    for path in (ROOT / "trainer").rglob("*.py"):
        bad = {n for n in imported_names(path) if n.endswith("_pb2_grpc") or n == "grpc"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_ray_is_confined_to_one_trainer_module() -> None:
    users = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "trainer").rglob("*.py")
        if any(n.split(".")[0] == "ray" for n in imported_names(path))
    )
    assert users == ["trainer/ray_job.py"]
