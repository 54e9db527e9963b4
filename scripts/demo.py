"""`make demo`: train the three tasks with Ray Train, export them, serve them, stream from each.

Steps (each printed as the command a user would type):
  1. recur-train --task {translation,sentiment,autocomplete} --data builtin --workers 2 --out models
     (run in this one process so the three runs share one local Ray instance)
  2. recur-serve --models models            (a real server on free ports)
  3. recur translate / sentiment / complete  (the CLI, streaming token by token; a translation
     decoded with the bundle's fitted beam search arrives once the search ends)
  4. a scrape of the Prometheus endpoint, then SIGTERM and a clean drain.

The demo checks its answers: a held-out sentence (not in the training split) must be translated
exactly as the grammar says (with the decoding recur-train fit, which a request that sets no
beam gets), "not good" must come out negative, and the completion of a prefix, the best of the
log's popular queries and the model's beam ranked together, must be a query of the log. It exits
non-zero when any of them is wrong.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODELS = ROOT / "models"
# (task, extra flags): sizes chosen so the three runs fit the demo's time budget on 2 cores.
RUNS = [
    ("translation", {"epochs": 4, "batch_size": 32}),
    ("sentiment", {"epochs": 1}),
    ("autocomplete", {"epochs": 2}),
]
SENTIMENT_PROBE = "not good"
COMPLETION_PREFIX = "weather in"
SUGGESTIONS = "5"  # ranked suggestions shown under the completion


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def train_all() -> None:
    from trainer.cli import run
    from trainer.config import resolve

    shutil.rmtree(MODELS, ignore_errors=True)
    for task, flags in RUNS:
        shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items())
        banner(f"recur-train --task {task} --data builtin --workers 2 {shown} --out models")
        started = time.perf_counter()
        cfg = resolve({"task": task, "workers": 2, "out": str(MODELS), "log_every": 100, **flags})
        run(cfg)
        print(f"[{task}] trained and exported in {time.perf_counter() - started:.0f} s", flush=True)


def start_server() -> tuple[subprocess.Popen[str], str, str]:
    banner("recur-serve --models models --port 0 --metrics-port 0")
    server = subprocess.Popen(
        [str(BIN / "recur-serve"), "--models", str(MODELS), "--port", "0", "--metrics-port", "0",
         "--host", "127.0.0.1", "--metrics-host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    deadline, found = time.monotonic() + 60, None
    for line in server.stdout:
        print(line, end="", flush=True)
        found = found or re.search(r"listening on ([\d.]+):(\d+), metrics ([^\s,]+)", line)
        if found and line.startswith("recur-serve: ready"):  # models loaded and warmed
            return server, f"{found.group(1)}:{found.group(2)}", found.group(3)
        if time.monotonic() > deadline:
            break
    server.kill()
    raise SystemExit("demo: recur-serve did not start; see its output above")


def recur(*args: str, target: str) -> str:
    """Run the `recur` CLI, showing its streamed output as it arrives; return what it printed."""
    print(f"$ recur {' '.join(repr(a) if ' ' in a else a for a in args)}", flush=True)
    proc = subprocess.Popen(
        [str(BIN / "recur"), *args, "--target", target],
        stdout=subprocess.PIPE,
        text=True,
        bufsize=0,
    )
    assert proc.stdout is not None
    printed = []
    while chunk := proc.stdout.read(1):
        printed.append(chunk)
        print(chunk, end="", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"demo: recur {args[0]} failed with exit code {proc.returncode}")
    return "".join(printed)


def held_out_sentence() -> tuple[str, str]:
    """A validation pair of six or more words; the corpus guarantees it is not in train."""
    from trainer.data.builtin import translation_pairs

    split = translation_pairs()
    train = {src for src, _ in split.train}
    return next((s, t) for s, t in split.valid if len(s.split()) >= 6 and s not in train)


def stream_from_each(target: str) -> list[str]:
    """Stream one request per task; return the failed checks."""
    failures = []
    source, reference = held_out_sentence()
    banner(f"translation of a held-out sentence (reference: {reference!r}), fitted decoding")
    translation = recur("translate", source, target=target).splitlines()[0].strip()
    if translation != reference:
        failures.append(f"translate {source!r}: got {translation!r}, expected {reference!r}")
    banner("running sentiment")
    printed = recur("sentiment", SENTIMENT_PROBE, target=target)
    if "label: negative" not in printed:
        failures.append(f"sentiment {SENTIMENT_PROBE!r} is not negative")
    banner("autocomplete: popular queries and the model's beam, ranked")
    from trainer.data.builtin.queries import distinct_queries

    printed = recur("complete", COMPLETION_PREFIX, "--suggestions", SUGGESTIONS, target=target)
    completed = printed.splitlines()[0].strip()
    if completed not in set(distinct_queries()):
        failures.append(f"completion {completed!r} is not a query of the log")
    recur("models", target=target)
    return failures


def show_metrics(url: str) -> None:
    banner(f"Prometheus metrics at {url}")
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    wanted = ("recur_requests_total{", "recur_time_to_first_token_seconds_count")
    for line in text.splitlines():
        if line.startswith(wanted):
            print(line)


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
    started = time.perf_counter()
    train_all()
    server, target, metrics_url = start_server()
    try:
        failures = stream_from_each(target)
        show_metrics(metrics_url)
    finally:
        banner("SIGTERM: drain and stop")
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
        print(output, end="")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s (after set-up)")
    if failures or server.returncode != 0:
        for failure in failures:
            print(f"demo: WRONG ANSWER: {failure}", file=sys.stderr)
        raise SystemExit(1)
    print("demo: all answers right")


if __name__ == "__main__":
    main()
