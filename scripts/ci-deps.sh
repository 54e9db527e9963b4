#!/usr/bin/env bash
# System tools the tests of tests/deploy drive, beyond what .venv holds: Prometheus and promtool
# (Debian's `prometheus` package). Idempotent and quiet: does nothing when they are on PATH.
# kubectl (with its built-in kustomize) is expected on the machine; without it those tests skip.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "ci-deps: prometheus/promtool missing and no apt-get; their tests will skip" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v kubectl >/dev/null || echo "ci-deps: kubectl not found; the deploy/k8s tests will skip" >&2
