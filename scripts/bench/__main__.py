"""The entry point of `make bench`: run the chosen scenarios, then write the summary."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
import traceback
from pathlib import Path

from scripts.bench import SCENARIOS, report
from scripts.bench.common import ROOT, Context, Result, write


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description="Benchmark Recur: every scenario, as ratios of side-by-side measurements.",
    )
    parser.add_argument("--quick", action="store_true", help="the reduced run (under 5 minutes)")
    parser.add_argument(
        "--gpu", action="store_true", help="the GPU scenario must find CUDA (fails, not skips)"
    )
    parser.add_argument(
        "--only", default="", metavar="NAME[,NAME]", help=f"among: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument(
        "--models", type=Path, help="serve this model repository instead of the cached bundles"
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds of every load run (default per scenario)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: redraw the plots, SUMMARY.md and the performance page from the "
        "JSON files in --out",
    )
    parser.add_argument(
        "--page",
        type=Path,
        help="the performance page --report-only writes (default: docs/performance.md for the "
        "default --out, else <out>/performance.md)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        known = ", ".join(SCENARIOS)
        parser.error(f"--only: unknown scenario {unknown[0]!r}; choose among {known}")
    return args, names


def run_one(name: str, ctx: Context) -> Result:
    module = importlib.import_module(SCENARIOS[name])
    started = time.perf_counter()
    try:
        result: Result = module.run(ctx)
    except Exception as error:  # one broken scenario must not lose the others' results
        traceback.print_exc()
        result = Result(scenario=name, title=name, status="failed", reason=repr(error))
    result.seconds = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    args, names = parse(argv)
    ctx = Context(
        out=args.out.resolve(), quick=args.quick, gpu=args.gpu,
        models=args.models.resolve() if args.models else None, duration=args.duration,
    )  # fmt: skip
    ctx.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return redraw(ctx.out, names, page=args.page or default_page(ctx.out))
    mode = "quick" if ctx.quick else "full"
    print(f"bench: {mode} run of {', '.join(names)}; results in {ctx.out}", flush=True)
    started = time.perf_counter()
    failed = []
    for name in names:
        print(f"\n== {name} ==", flush=True)
        result = run_one(name, ctx)
        result.extra["run"] = {"mode": mode, "command": _command(argv), "commit": _commit()}
        path = write(result, ctx.out)
        data = report.load(path)
        report.plot(name, data, ctx.out / f"{name}.png")
        print("\n".join(report.render(name, data)), flush=True)
        print(f"({result.seconds:.0f} s; {path})", flush=True)
        if result.status == "failed":
            failed.append(name)
    summary = report.write_summary(ctx.out, mode=mode, argv=_argv(argv))
    print("\n" + report.targets_table(ctx.out), flush=True)
    print(f"bench: done in {time.perf_counter() - started:.0f} s; wrote {summary}", flush=True)
    if failed:
        print(f"bench: failed scenarios: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _argv(argv: list[str] | None) -> list[str]:
    return sys.argv[1:] if argv is None else argv


def _command(argv: list[str] | None) -> str:
    return " ".join(["python -m scripts.bench", *_argv(argv)])


def _commit() -> str:
    """The code measured: the commit, marked when the working tree had changes on top of it
    ("" outside a git checkout)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
    except OSError:
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + (" with uncommitted changes" if changes.stdout.strip() else "")


def default_page(out: Path) -> Path:
    """docs/performance.md for the repository's own results; beside the JSON for any other
    --out (a test's results must not rewrite the committed page)."""
    if out.resolve() == (ROOT / "bench-results").resolve():
        return ROOT / "docs" / "performance.md"
    return out / "performance.md"


def redraw(out: Path, names: list[str], *, page: Path) -> int:
    """Plots, SUMMARY.md and the performance page again from the scenarios' JSON files (no
    measurement)."""
    found = [n for n in names if (out / f"{n}.json").is_file()]
    for name in found:
        data = report.load(out / f"{name}.json")
        if "status" in data:
            report.plot(name, data, out / f"{name}.png")
    summary = report.write_summary(out, mode="redrawn", argv=["--report-only"])
    print(report.targets_table(out))
    if not report.scenario_results(out):  # a fresh clone: keep the committed page
        print(f"bench: no scenario's JSON in {out}; {page} left as it is")
        return 0
    written = report.write_page(out, page)
    print(f"bench: redrew {len(found)} plots, {summary} and {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
