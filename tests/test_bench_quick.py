"""`python -m scripts.bench`: tiny scenarios end to end write their JSON, plot and summary.

Each runs the real entry point in a subprocess on the session's tiny bundles (`--models`), with
short loads (`--duration`); only the shape of what is written is checked, never a timing.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def bench(
    out: Path, models: Path, *flags: str, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], Any]:
    command = [sys.executable, "-m", "scripts.bench", "--quick", "--out", str(out)]
    command += ["--models", str(models), "--duration", "0.5", *flags]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    return result, out


def read(out: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    return data


def check_common(data: dict[str, Any], name: str) -> None:
    assert data["scenario"] == name
    assert data["machine"]["cpu"] and data["machine"]["logical_cores"] >= 1
    assert data["versions"]["onnxruntime"] and data["versions"]["grpcio"]
    assert data["settings"] and data["seconds"] > 0 and data["finished_at"]


def test_ceiling_scenario_writes_rows_transport_plot_and_summary(
    tiny_models: Path, tmp_path: Path
) -> None:
    result, out = bench(tmp_path, tiny_models, "--only", "ceiling")
    assert result.returncode == 0, result.stderr
    data = read(out, "ceiling")
    check_common(data, "ceiling")
    assert data["status"] == "ok"
    assert {(r["graph"], r["batch"]) for r in data["rows"]} == {
        (graph, batch) for graph in ("lm_step", "decoder_step") for batch in (1, 8, 64, 256)
    }
    for row in data["rows"]:
        assert row["ceiling_tokens_per_second"] > 0 and row["best"] in data["settings"]["variants"]
    assert [(r["messages"], r["concurrency"]) for r in data["transport"]] == [
        (packing, c) for packing in ("one token per message", "packed") for c in (1, 64)
    ]
    assert all(r["tokens_per_second"] > 0 for r in data["transport"])
    # however the echo server packs them, the load generator counts every token it streamed
    max_tokens = data["settings"]["transport_max_tokens"]
    assert all(r["tokens_per_request"] == max_tokens for r in data["transport"])
    assert (out / "ceiling.png").read_bytes()[:8] == PNG
    summary = (out / "SUMMARY.md").read_text()
    assert "## Ceiling" in summary and "![ceiling](ceiling.png)" in summary


def test_typing_scenario_writes_latencies_and_its_target(tiny_models: Path, tmp_path: Path) -> None:
    result, out = bench(tmp_path, tiny_models, "--only", "typing", timeout=240)
    assert result.returncode == 0, result.stderr
    data = read(out, "typing")
    check_common(data, "typing")
    assert [r["length"] for r in data["rows"]] == [10, 50, 200]
    for row in data["rows"]:
        assert row["session_ms"] > 0 and row["complete_ms"] > 0 and row["samples"] == 20
    target, p99 = data["targets"]
    assert target["goal"] == "<= 1.5x" and target["value"] > 0 and not target["failed"]
    assert target["met"] is (target["value"] <= target["threshold"])  # the verdict is the value's
    assert len(data["forward_typing_ms"]) == 199  # keys 1 … 199, typed before the 200th
    assert "target session key-to-first-event" in result.stdout
    rows = data["suggesting"]
    assert [(r["sessions"], r["model_only"]) for r in rows] == [
        (1, False), (1, True), (64, False), (64, True)
    ]  # fmt: skip
    assert [r["keys"] for r in rows] == [60, 60, 640, 640]
    assert [r["round"] for r in rows] == [1, 1, 1, 1]  # a full run types 3 rounds of 64 ranked
    for row in rows:
        assert 0 < row["first_p50_ms"] <= row["final_p50_ms"] <= row["final_p99_ms"], row
        assert row["suggestions_min"] == 8, "every final event holds the 8 suggestions"
        assert 0 < row["open_p50_ms"] <= row["open_max_ms"], row  # openings, kept apart
    assert p99["goal"] == "<= 20 ms" and p99["unit"] == "ms" and not p99["failed"]
    assert p99["value"] == rows[2]["final_p99_ms"]  # ranked, 64 sessions
    assert p99["met"] is (p99["value"] <= 20)
    assert "sessions, ranked     : key to first event" in result.stdout


def test_metrics_scenario_switches_recording_off_and_checks_it(
    tiny_models: Path, tmp_path: Path
) -> None:
    from scripts.bench import serving

    result, out = bench(tmp_path, tiny_models, "--only", "metrics")
    assert result.returncode == 0, result.stderr
    data = read(out, "metrics")
    if not serving.has_flag("--no-metrics"):
        assert data["status"] == "skipped" and "--no-metrics" in data["reason"]
        return
    check_common(data, "metrics")
    assert [(r["metrics"], r["round"]) for r in data["rows"]] == [
        ("on", 1), ("no endpoint", 1), ("off", 1), ("off", 2), ("no endpoint", 2), ("on", 2)
    ]  # fmt: skip
    assert data["problems"] == []  # recording really off, the same tokens, no failed request
    assert all(r["scrapes"] == 0 for r in data["rows"] if r["metrics"] != "on")
    (target,) = data["targets"]
    assert target["value"] == pytest.approx(abs(data["ratios"]["on/off"] - 1))
    assert target["met"] is (target["value"] <= 0.05)


def test_a_target_beside_errors_or_different_outputs_is_missed_whatever_its_value(
    tmp_path: Path,
) -> None:
    from scripts.bench import report
    from scripts.bench.common import Result, Target, write

    good = Target("tokens/s ratio", ">= 2x", 9.0, 2.0)
    assert good.met is True
    result = Result("peer", "Peer", targets=[good, Target("latency", "<= 1x", 0.1, 1.0, False)])
    result.fail_targets([])
    assert [t.met for t in result.targets] == [True, True]
    result.fail_targets(["recur c=64 round 1: 3 failed requests (UNAVAILABLE 3)"])
    assert [t.met for t in result.targets] == [False, False]
    write(result, tmp_path)
    lines = "\n".join(report.render("peer", report.load(tmp_path / "peer.json")))
    assert "MISSED" in lines and "does not count: recur c=64 round 1" in lines
    assert "MISSED (does not count" in report.targets_table(tmp_path)
    redraw = [sys.executable, "-m", "scripts.bench", "--report-only", "--out", str(tmp_path)]
    done = subprocess.run(redraw, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "**missed** (does not count: recur c=64" in (tmp_path / "SUMMARY.md").read_text()


def test_side_by_side_helpers_alternate_count_errors_and_find_different_tokens() -> None:
    from scripts.bench import serving
    from scripts.bench.common import alternated

    assert [alternated(["recur", "ray"], i) for i in range(3)] == [
        ["recur", "ray"], ["ray", "recur"], ["recur", "ray"]
    ]  # fmt: skip
    runs = [
        {"server": "recur", "round": 1, "errors": {}, "failed_with_warmup": 0},
        {"server": "ray", "round": 1, "errors": {"UNAVAILABLE": 2}, "failed_with_warmup": 2},
        {"server": "ray", "round": 2, "errors": {}, "failed_with_warmup": 1},
    ]
    assert serving.run_errors(runs, "server", "round") == [
        "server=ray round=1: 2 failed requests (UNAVAILABLE 2)",
        "server=ray round=2: 1 failed requests (in warm-up)",
    ]
    same = [[5, 6]] * len(serving.payloads("autocomplete"))
    other = [*same[:-1], [5, 7]]
    assert serving.differences({"a": same, "b": same}, "autocomplete") == []
    (line,) = serving.differences({"a": same, "b": same, "c": other}, "autocomplete")
    assert line.endswith("a [5, 6] vs c [5, 7]")
    assert serving.briefly(["1", "2", "3", "4", "5"]) == ["1", "2", "3", "and 2 more"]


def test_typists_start_at_different_points_of_their_queries() -> None:
    """64 typists that all began at their queries' first character sent 64 one-character
    prefixes (the costliest keys) within one key's time; each now starts its own way in."""
    from scripts.bench.keystrokes import WORDS, strokes

    one = strokes(0, 1)
    assert one[0] == WORDS[0][:1] and one[-1] == WORDS[-1]  # alone: from the start, box cleared
    assert all(len(a) + 1 == len(b) or len(b) == 1 for a, b in itertools.pairwise(one))
    cycles = [strokes(number, 64) for number in range(64)]
    firsts = [cycle[0] for cycle in cycles]
    assert sum(len(first) == 1 for first in firsts) <= 64 // 8, firsts  # not all at a 1st char
    assert len(set(firsts)) > 48, firsts  # nor in step with the others on the same query
    for number, cycle in enumerate(cycles):  # the same keys as from the start, rotated
        own = strokes(number, 1)
        assert sorted(cycle) == sorted(own) and cycle[0] in own


def test_server_flags_are_read_from_its_help() -> None:
    from scripts.bench import serving

    text = """options:
  --executor-workers EXECUTOR_WORKERS
                        (default: 3)
  --metrics, --no-metrics
                        record Prometheus metrics (default: True)
"""
    assert serving.flag_default("--executor-workers", text) == "3"
    assert serving.flag_default("--max-batch-size", text) is None
    assert serving.has_flag("--no-metrics", text)
    assert not serving.has_flag("--no-metrics", text.replace("--no-metrics", "--no-metric"))
    assert not serving.has_flag("--metrics-port", text)
    assert serving.flag_default("--executor-workers") is not None  # the real server's help


def test_gpu_scenario_records_a_skip_without_cuda_and_fails_under_gpu(
    tiny_models: Path, tmp_path: Path
) -> None:
    import torch

    result, out = bench(tmp_path, tiny_models, "--only", "gpu")
    assert result.returncode == 0, result.stderr
    data = read(out, "gpu")
    if torch.cuda.is_available():
        assert data["status"] == "ok" and data["rows"]
        return
    assert (data["status"], data["reason"]) == ("skipped", "no CUDA device")
    assert "skipped: no CUDA device" in (out / "SUMMARY.md").read_text()
    result, out = bench(tmp_path, tiny_models, "--only", "gpu", "--gpu")
    assert result.returncode == 1 and read(out, "gpu")["status"] == "failed"


def test_unknown_scenario_is_refused_by_name(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "scripts.bench",
        "--only",
        "ceiling,nope",
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "unknown scenario 'nope'" in result.stderr


def test_the_performance_page_is_written_from_the_json(tmp_path: Path) -> None:
    """`--report-only` writes the page from the JSON files: the hand-written header verbatim, the
    run each file names (command, quick or full, commit), every target's measured value and
    verdict; measured again, the page follows the JSON. The committed page is that page."""
    from scripts.bench import report
    from scripts.bench.__main__ import default_page
    from scripts.bench.common import Result, Target, write

    def measured(ratio: float) -> str:
        run = {
            "mode": "full",
            "command": "python -m scripts.bench --only peer",
            "commit": "abc1234",
        }
        target = Target("Recur / Ray Serve tokens/s at concurrency 64", ">= 10x", ratio, 10.0)
        result = Result("peer", "Peer: Recur vs Ray Serve", targets=[target], extra={"run": run})
        write(result, tmp_path)
        redraw = [sys.executable, "-m", "scripts.bench", "--report-only", "--out", str(tmp_path)]
        done = subprocess.run(redraw, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stderr
        return (tmp_path / "performance.md").read_text()

    page = measured(4.53)
    header = report.PAGE_HEADER.read_text()
    assert page.startswith(header.rstrip("\n") + "\n")
    assert "- `python -m scripts.bench --only peer` (full run, at abc1234): peer" in page
    row = "| peer | Recur / Ray Serve tokens/s at concurrency 64 | {} | >= 10x | {} |"
    assert row.format("4.53x", "**missed**") in page
    assert "(quick run" not in page and "A quick run (`--quick`)" not in page
    again = measured(12.5)
    assert row.format("12.50x", "met") in again and "4.53x" not in again

    empty, kept = tmp_path / "fresh-clone", tmp_path / "kept.md"
    kept.write_text("the committed page")
    redraw = [sys.executable, "-m", "scripts.bench", "--report-only", "--out", str(empty)]
    done = subprocess.run([*redraw, "--page", str(kept)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "left as it is" in done.stdout, done.stderr
    assert kept.read_text() == "the committed page", "no JSON: the page is not emptied"
    assert default_page(ROOT / "bench-results") == ROOT / "docs" / "performance.md"
    assert default_page(tmp_path) == tmp_path / "performance.md"
    committed = (ROOT / "docs" / "performance.md").read_text()
    assert committed.startswith(header.rstrip("\n") + "\n"), "regenerate: --report-only"
    assert "## The run these figures are from" in committed and "## Targets" in committed
