"""What the reliability tests read from a running `recur-serve`: its memory, its metrics, its
health, and streams driven to the end with every status code counted."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MIB = 1 << 20


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` (Linux: /proc/<pid>/status, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    return text


def gauge_sum(url: str, name: str) -> float:
    """The sum over every label set of the metric `name` (a gauge or a counter)."""
    total = 0.0
    for line in scrape(url).splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for_gauge(url: str, name: str, value: float, *, within: float = 10.0) -> float:
    """Poll `name` until its sum equals `value` (or `within` seconds pass); returns the last sum."""
    deadline = time.monotonic() + within
    while True:
        seen = gauge_sum(url, name)
        if seen == value or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def health(target: str, service: str = "") -> str:
    """The health status name of `service` ("" = the whole server)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
