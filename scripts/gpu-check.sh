#!/usr/bin/env bash
# The GPU checks in one call, for a machine with CUDA and no Ray (the device tool's machine):
# every `gpu`-marked test under tests/ and the GPU bench scenario (scripts/bench/gpu.py, its
# quick run), each in one Python process (`--workers 0`: no Ray, no server), the whole within
# GPU_CHECK_SECONDS (default 540, so that a 600-second call returns with the summary).
#
#   scripts/gpu-check.sh [WHEEL_DIR] [PYTEST_ARGS...]
#
# WHEEL_DIR ('' for none) holds wheels of what the machine lacks; they are installed into a
# private folder first on PYTHONPATH, never over its torch or numpy. PYTHON picks the
# interpreter (default python3). The bench writes gpu.json, gpu.png and SUMMARY.md to
# GPU_CHECK_OUT (default: a new temporary folder).
#
# Exit status: 0 every test passed and the bench scenario measured; 1 a test or the bench
# failed; 3 no CUDA device: the tests skipped and the bench recorded "skipped", so nothing was
# checked (said loudly at the end; a machine without a GPU must not pass for one that passed);
# 124 the time ran out (a part was stopped).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
started=$SECONDS
budget=${GPU_CHECK_SECONDS:-540}
bench_reserve=150  # seconds kept for the bench if the tests run long (its quick run: ~1 minute)
if [ -n "${1:-}" ]; then
  deps=$(mktemp -d)
  "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$deps" "$1"/*.whl
  export PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}"
fi
logs=$(mktemp -d)
out=${GPU_CHECK_OUT:-$logs/bench}

# timeout's status when it stopped the command (124), or killed it 10 s later (137).
timed_out() { [ "$1" = 124 ] || [ "$1" = 137 ]; }

# Seconds left of the budget, less $1, at least 1 (`timeout 0` would mean no bound at all).
left() {
  local seconds=$((budget - (SECONDS - started) - ${1:-0}))
  echo $((seconds > 0 ? seconds : 1))
}

device=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
torch_version=$("$PYTHON" -c "import torch; print(torch.__version__)")
echo "gpu-check: torch $torch_version, CUDA device: ${device:-none}; ${budget} s in all"

# Every test file that carries the marker (collecting all of tests/ would import Ray's tests).
mapfile -t files < <(grep -rlE --include='test_*.py' 'mark\.gpu\b' tests)
if [ "${#files[@]}" = 0 ]; then
  echo "gpu-check: no test file under tests/ carries the gpu marker" >&2
  exit 1
fi
echo "gpu-check: the gpu tests of ${files[*]}"
tests_rc=0
timeout -k 10 "$(left "$bench_reserve")" "$PYTHON" -m pytest -m gpu "${files[@]}" -q \
  --durations=10 -p no:cacheprovider -o addopts="-ra --import-mode=importlib" "${@:2}" 2>&1 \
  | tee "$logs/tests.log" || tests_rc=$?
tests_summary=$(tail -n 1 "$logs/tests.log")
if timed_out "$tests_rc"; then
  tests_summary="stopped at the time bound"
fi

bench_flags=(--only gpu --quick --out "$out")
if [ -n "$device" ]; then
  bench_flags+=(--gpu)  # with a device, a scenario that does not find it fails
fi
echo "gpu-check: python -m scripts.bench ${bench_flags[*]}"
rm -f "$out/gpu.json"  # a result left by an earlier run must not stand for this one
bench_rc=0
timeout -k 10 "$(left)" "$PYTHON" -m scripts.bench "${bench_flags[@]}" 2>&1 \
  | tee "$logs/bench.log" || bench_rc=$?
bench_summary=$("$PYTHON" -c '
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    print(f"no readable gpu.json ({e})")
    raise SystemExit
why = data["reason"] or "; ".join(data["notes"])
print(data["status"] + " (%.0f s)" % data["seconds"] + (": " + why if why else ""))
' "$out/gpu.json") || bench_summary="(its summary could not be read)"

if timed_out "$tests_rc" || timed_out "$bench_rc"; then
  verdict="TIME RAN OUT after $((SECONDS - started)) s"; status=124
elif [ "$tests_rc" != 0 ] || [ "$bench_rc" != 0 ]; then
  verdict="FAILED"; status=1
elif [ -z "$device" ]; then
  verdict="NO CUDA DEVICE: nothing was checked on a GPU (tests skipped, bench skipped)"; status=3
elif [[ "$tests_summary" == *skipped* ]]; then
  verdict="PASSED, BUT SOME GPU TESTS SKIPPED ON A MACHINE WITH CUDA: see their reasons above"
  status=0
else
  verdict="PASSED"; status=0
fi
cat <<EOF

== gpu-check summary ($((SECONDS - started)) s of $budget) ==
device:     ${device:-none} (torch $torch_version)
gpu tests:  $tests_summary (exit $tests_rc)
bench gpu:  $bench_summary (exit $bench_rc; $out)
result:     $verdict
EOF
exit "$status"
