"""deploy/observability on a real Prometheus: promtool accepts the rules and config, and a
Prometheus scraping a real recur-serve, while a client streams, sees the metrics the alerts and
the Grafana dashboard query, with the right labels. Everything stays on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clients.sdk import RecurClient, RecurError
from tests.conftest import Server, start_server, stop_server
from tests.deploy.conftest import wait_http

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "recur-serve.json"
TASK_RPCS = {"translation": "Translate", "sentiment": "Analyze", "autocomplete": "Complete"}


@pytest.mark.parametrize("check", ["rules alerts.yml", "config prometheus.yml"])
def test_promtool_accepts_rules_and_config(promtool: str, check: str) -> None:
    result = subprocess.run(
        [promtool, "check", *check.split()], cwd=OBSERVABILITY, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.fixture
def server(tiny_models: Path) -> Iterator[Server]:
    server = start_server(tiny_models)
    yield server
    stop_server(server)


@pytest.fixture
def prometheus_url(
    prometheus: str, server: Server, tmp_path: Path, free_port: Callable[[], int]
) -> Iterator[str]:
    """A Prometheus running deploy/observability/prometheus.yml, retargeted at `server`."""
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(OBSERVABILITY / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [urllib.parse.urlsplit(server.metrics_url).netloc]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={address}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_http(f"http://{address}/-/ready", timeout=60, what="Prometheus")
        yield f"http://{address}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    body = wait_http(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}),
                     timeout=10, what="Prometheus")  # fmt: skip
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def poll(url: str, expr: str, ready: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
    """Query `expr` until `ready(result)`, for at most 30 s."""
    deadline = time.monotonic() + 30
    while not ready(result := query(url, expr)):
        assert time.monotonic() < deadline, f"{expr} never became ready: {result}"
        time.sleep(0.5)
    return result


async def traffic(target: str) -> None:
    """Two streams per task, and one call for a model that does not exist (NOT_FOUND)."""
    async with RecurClient(target) as client:
        for _ in range(2):
            [_ async for _ in client.translate("the small black dog sees a red car")]
            [_ async for _ in client.sentiment("the acting was good but the plot was terrible")]
            [_ async for _ in client.complete("weather in", max_tokens=8)]
        with pytest.raises(RecurError, match="NOT_FOUND"):
            [_ async for _ in client.sentiment("fine", model="no-such-model")]


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    return [e.replace("$__rate_interval", "1m").replace("$task", ".*") for e in exprs]


def test_prometheus_scrapes_recur_serve_while_a_client_streams(
    prometheus_url: str, server: Server
) -> None:
    url = prometheus_url
    poll(url, 'up{job="recur-serve"}', lambda r: bool(r) and r[0]["value"][1] == "1")
    asyncio.run(traffic(server.target))

    ok = poll(url, 'recur_requests_total{code="OK"}', lambda r: len(r) >= 3)
    seen = {(s["metric"]["task"], s["metric"]["rpc"]) for s in ok}
    assert seen >= set(TASK_RPCS.items())
    for series in ok:
        assert series["metric"]["job"] == "recur-serve"
        assert {"model", "version", "task", "rpc", "code"} <= series["metric"].keys()
        assert float(series["value"][1]) >= 2
    assert poll(url, 'recur_requests_total{code="NOT_FOUND"}', bool)
    assert poll(url, 'recur_request_failures_total{reason="not_found"}', bool)

    ttft = 'recur_time_to_first_token_seconds_bucket{le="+Inf"}'
    buckets = poll(url, ttft, lambda r: len(r) >= 3)
    assert {s["metric"]["task"] for s in buckets} == set(TASK_RPCS)
    assert all(float(s["value"][1]) >= 2 for s in buckets)
    # The tiny translation model may stop at once: no token or inter-token gap to observe. The
    # NOT_FOUND call has empty model labels, which Prometheus drops: task!="" leaves it out.
    for metric, tasks in (("recur_inter_token_latency_seconds", 2),
                          ("recur_request_duration_seconds", 3),
                          ("recur_queue_duration_seconds", 3)):  # fmt: skip
        counts = poll(url, f'{metric}_count{{task!=""}}', lambda r, n=tasks: len(r) >= n)
        assert all({"model", "version", "task", "rpc"} <= s["metric"].keys() for s in counts)
    tokens = poll(url, "sum by (task) (recur_generated_tokens_total)", lambda r: len(r) >= 2)
    # Every streaming task's series exists from its first stream on (0 until it streams).
    streamed = {s["metric"]["task"]: float(s["value"][1]) for s in tokens}
    assert streamed["sentiment"] > 0 and streamed["autocomplete"] > 0, streamed

    # Every dashboard panel's query has data; every alert rule evaluates without error.
    for expr in dashboard_queries():
        assert poll(url, expr, bool), expr
    rules = rules_of(url)
    assert {r["name"] for r in rules} >= {
        "RecurHighErrorRate", "RecurSlowTimeToFirstToken", "RecurSaturated", "RecurDrainStuck",
    }  # fmt: skip
    assert all(r["health"] == "ok" for r in rules), rules


def rules_of(url: str) -> list[dict[str, Any]]:
    """The loaded alert rules, once each has been evaluated at least once (at most 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        groups = json.loads(wait_http(f"{url}/api/v1/rules", timeout=10, what="Prometheus"))
        rules = [r for g in groups["data"]["groups"] for r in g["rules"]]
        if rules and all(r.get("health") != "unknown" for r in rules):
            return rules
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
