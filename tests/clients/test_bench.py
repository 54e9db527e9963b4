"""`recur bench`: its statistics, against the fakes, and against a real recur-serve."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from clients import bench_report
from clients.bench_report import Samples, distribution_ms, percentile
from clients.cli import main
from scripts.bench.common import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("values", "q", "expected", "reason"),
    [
        ([], 50, None, "no samples: NaN"),
        ([7.0], 99, 7.0, "one sample is every percentile"),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5, "interpolates between the middle ranks"),
        ([float(v) for v in range(1, 101)], 90, 90.1, "rank 89.1 of 0..99"),
        ([float(v) for v in range(1, 101)], 99, 99.01, "rank 98.01"),
        ([3.0, 9.0], 100, 9.0, "p100 is the max"),
    ],
)
def test_percentile(values: list[float], q: float, expected: float | None, reason: str) -> None:
    result = percentile(values, q)
    if expected is None:
        assert result != result, reason
    else:
        assert result == pytest.approx(expected), reason


def test_distribution_is_in_milliseconds() -> None:
    assert distribution_ms([0.003, 0.001, 0.002]) == pytest.approx(
        {"count": 3, "mean": 2.0, "p50": 2.0, "p90": 2.8, "p99": 2.98, "max": 3.0}
    )
    assert distribution_ms([])["p99"] is None


def test_merged_samples_add_up() -> None:
    one = Samples(tokens=3, events=4, warmup_requests=1, timeline={0: [1, 3]})
    one.codes.update({"OK": 1})
    one.e2e.append(0.01)
    one.cpu_seconds.append(0.5)
    one.wall_seconds.append(2.0)
    two = Samples(tokens=5, events=7, timeline={0: [2, 5], 1: [1, 0]})
    two.codes.update({"OK": 2, "UNAVAILABLE": 1})
    two.cpu_seconds.append(1.9)
    two.wall_seconds.append(2.0)
    one.merge(two)
    report = bench_report.build(one, config={})
    assert report["requests"] == {
        "warmup": 1,
        "measured": 4,
        "total": 5,
        "ok": 3,
        "errors": {"UNAVAILABLE": 1},
    }
    assert report["throughput"] == {
        "requests_per_second": 2.0,
        "tokens_per_second": 4.0,
        "tokens": 8,
    }
    assert report["timeline"] == [
        {"second": 0, "requests": 3, "tokens": 8},
        {"second": 1, "requests": 1, "tokens": 0},
    ]
    generator = report["generator"]
    assert generator["cpu_us_per_request"] == pytest.approx(600_000)
    assert generator["cpu_utilization_per_process"] == pytest.approx([0.25, 0.95])
    assert generator["saturated"] is True
    assert "Run with more --processes" in bench_report.format_text(report)


def bench(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str, code: int = 0
) -> dict[str, Any]:
    """Runs `recur bench ARGV --json FILE` in-process; returns the JSON report."""
    report = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exited:
        main(["bench", *argv, "--json", str(report)])
    out = capsys.readouterr().out
    assert exited.value.code == code, out
    assert out.startswith("requests: ")
    loaded: dict[str, Any] = json.loads(report.read_text())
    return loaded


def test_closed_loop_counts_exactly_the_requested_requests(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str
) -> None:
    report = bench(
        capsys, tmp_path, "--target", target, "--task", "autocomplete", "--requests", "40",
        "--concurrency", "4", "--warmup", "0", "--max-tokens", "2",
    )  # fmt: skip
    assert report["requests"] == {"warmup": 0, "measured": 40, "total": 40, "ok": 40, "errors": {}}
    assert report["throughput"]["tokens"] == 80, "max-tokens 2 reaches the server"
    latency = report["latency_ms"]
    assert latency["ttft"]["count"] == latency["end_to_end"]["count"] == 40
    assert latency["inter_token"]["count"] == latency["time_per_token"]["count"] == 40
    assert 0 < latency["ttft"]["p50"] <= latency["end_to_end"]["p50"]
    assert report["generator"]["cpu_us_per_event"] > 0
    assert sum(point["requests"] for point in report["timeline"]) == 40


@pytest.mark.parametrize(("packed", "gaps"), [(False, 4), (True, 1)])
def test_inter_token_latency_counts_gaps_between_messages_not_tokens(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, packed: bool, gaps: int
) -> None:
    """Five tokens a request: five messages (four gaps), or the first alone and the other
    four in one message (one gap); every token counts, and so does the time per token."""
    port = free_port()
    command = [sys.executable, "-m", "scripts.bench.echo_server", "--port", str(port)]
    server = subprocess.Popen([*command, *(["--packed"] if packed else [])], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        report = bench(
            capsys, tmp_path, "--target", f"127.0.0.1:{port}", "--task", "autocomplete",
            "--requests", "10", "--concurrency", "2", "--warmup", "0", "--max-tokens", "5",
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert report["throughput"]["tokens"] == 50
    latency = report["latency_ms"]
    assert latency["inter_token"]["count"] == 10 * gaps
    assert latency["time_per_token"]["count"] == 10
    assert 0 < latency["time_per_token"]["p50"] <= latency["end_to_end"]["p50"]


def test_open_loop_reports_errors_by_code_and_schedule_lag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str
) -> None:
    payloads = tmp_path / "payloads.txt"
    payloads.write_text("the cat\n\nthe dog\n")
    report = bench(
        capsys, tmp_path, "--target", target, "--rate", "100", "--duration", "0.5",
        "--warmup", "0.2", "--model", "missing", "--payload-file", str(payloads), "--seed", "1",
        code=1,
    )  # fmt: skip
    requests = report["requests"]
    assert requests["ok"] == 0
    assert requests["errors"] == {"NOT_FOUND": requests["measured"]}
    assert 20 <= requests["measured"] <= 100, "about 50 Poisson arrivals in 0.5 s"
    assert report["latency_ms"]["schedule_lag"]["count"] == requests["measured"]
    assert report["config"]["mode"] == "open"


def test_a_server_that_cannot_be_reached_is_said_once_before_the_load(
    capsys: pytest.CaptureFixture[str], closed_target: str
) -> None:
    """Every request of a load would fail at once, back to back (thousands of warm-up requests
    in no time); one health call says it instead, and no load runs."""
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--target", closed_target, "--duration", "2"])
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert f"cannot reach the server at {closed_target}" in captured.err
    assert "requests:" not in captured.out


HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.mark.skipif(HAS_MATPLOTLIB, reason="matplotlib is installed")
def test_plot_without_matplotlib_names_the_package(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--target", target, "--plot", str(tmp_path / "p.png")])
    assert exited.value.code == 1
    assert "pip install matplotlib==3.11.2" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="--plot needs matplotlib, not installed")
def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str) -> None:
    plot = tmp_path / "bench.png"
    bench(capsys, tmp_path, "--target", target, "--requests", "30", "--warmup", "0",
          "--plot", str(plot))  # fmt: skip
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _requests_by_code(metrics_url: str) -> dict[str, float]:
    """recur_requests_total of the Analyze (sentiment) rpc by code, scraped from the server."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counts: dict[str, float] = {}
    for match in re.finditer(r"^recur_requests_total\{(.*)\} (\S+)$", text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels["rpc"] == "Analyze":
            counts[labels["code"]] = counts.get(labels["code"], 0.0) + float(match.group(2))
    return counts


def test_bench_against_the_real_server_matches_its_metrics(served: Any, tmp_path: Path) -> None:
    before = _requests_by_code(served.metrics_url)
    report_path = tmp_path / "real.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECUR_")}
    result = subprocess.run(
        [sys.executable, "-m", "clients.cli", "bench", "--target", served.target,
         "--task", "sentiment", "--concurrency", "8", "--duration", "2.5", "--warmup", "0.5",
         "--processes", "2", "--json", str(report_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = _requests_by_code(served.metrics_url)
    report = json.loads(report_path.read_text())
    counted = {code: after[code] - before.get(code, 0.0) for code in after}
    assert sum(counted.values()) == report["requests"]["total"] > 0
    assert counted.get("OK", 0.0) == report["requests"]["ok"] + report["requests"]["warmup"]
    assert report["generator"]["processes"] == 2
    assert report["throughput"]["tokens_per_second"] > 0
    assert re.search(r"\[\s*\d+\.\d s\]\s+\d+ requests", result.stderr), "a progress line"
    print(result.stdout)
