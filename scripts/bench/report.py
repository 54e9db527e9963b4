"""Tables, plots, `SUMMARY.md` and the performance page (docs/performance.md) from the
scenarios' JSON files."""

from __future__ import annotations

import importlib
import json
import math
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scripts.bench import SCENARIOS


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _module(name: str) -> Any:
    return importlib.import_module(SCENARIOS[name])


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table: thousands separators for big ones, `-` for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    """A markdown table of `rows`: `columns` are (key, header) pairs."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |"]
    lines.append("|" + "|".join("---:" if i else "---" for i in range(len(columns))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |")
    return lines


def fmt_target(target: dict[str, Any]) -> str:
    value = target["value"]
    if value is None:
        return "-"
    unit = target.get("unit")
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.1%}" if unit == "%" else f"{value:.2f}x"


def target_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for t in data.get("targets", []):
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"- target {t['name']}: {fmt_target(t)} (goal {t['goal']}) — {verdict}")
        if t.get("failed"):
            lines.append(f"  does not count: {t['failed']}")
        if t.get("detail"):
            lines.append(f"  {t['detail']}")
    return lines


def render(name: str, data: dict[str, Any]) -> list[str]:
    """Markdown lines for one scenario: status or targets, then its own table."""
    if data["status"] != "ok":
        return [f"{data['status']}: {data['reason']}"]
    lines = target_lines(data)
    body: Callable[[dict[str, Any]], list[str]] | None = getattr(_module(name), "render", None)
    if body is not None:
        lines += ["", *body(data)]
    lines += [f"- {note}" for note in data.get("notes", [])]
    return lines


def plot(name: str, data: dict[str, Any], path: Path) -> Path | None:
    """The scenario's PNG (None when it has no plot, was skipped, or matplotlib is missing)."""
    draw = getattr(_module(name), "plot", None)
    if draw is None or data["status"] != "ok":
        return None
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = draw(data, plt)
    figure.text(0.005, 0.005, footer(data), fontsize=6, color="gray")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def footer(data: dict[str, Any]) -> str:
    """The machine, versions and settings a figure was measured with, in one line."""
    machine, versions = data["machine"], data["versions"]
    libraries = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k != "protobuf")
    settings = ", ".join(
        f"{k}={v}"
        for k, v in data["settings"].items()
        if isinstance(v, int | float) or (isinstance(v, str) and len(v) < 40)
    )
    text = (
        f"{machine['cpu']}, {machine['usable_cores']} cores, load {machine['load_average'][0]:.1f}"
        f" | {libraries} | {data['finished_at']} | {settings}"
    )
    return textwrap.fill(text, width=170, max_lines=3)


def scenario_results(out: Path) -> list[tuple[str, dict[str, Any]]]:
    """The scenarios' results found in `out` (files of another shape, e.g. those
    `scripts/bench_export.py` writes on its own, are left out)."""
    found = []
    for name in SCENARIOS:
        path = out / f"{name}.json"
        if path.is_file() and "status" in (data := load(path)):
            found.append((name, data))
    return found


def targets_table(out: Path) -> str:
    """Every target of every scenario found in `out`, one line each."""
    lines = [f"{'scenario':<10} {'target':<58} {'measured':>10} {'goal':>9}  verdict"]
    for name, data in scenario_results(out):
        if data["status"] != "ok":
            lines.append(f"{name:<10} {data['status'] + ': ' + data['reason']:<80.80}")
        for t in data.get("targets", []):
            verdict = {True: "met", False: "MISSED", None: "-"}[t["met"]]
            verdict += " (does not count: errors or different outputs)" if t.get("failed") else ""
            lines.append(
                f"{name:<10} {t['name']:<58.58} {fmt_target(t):>10} {t['goal']:>9}  {verdict}"
            )
    return "\n".join(lines)


def machine_lines(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """The machine and library versions of the first result (a run measures on one machine)."""
    if not results:
        return []
    machine, versions = results[0][1]["machine"], results[0][1]["versions"]
    memory = machine.get("memory_bytes") or 0
    return [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, "
        f"{memory / 2**30:.0f} GiB, {machine['platform']}, Python {machine['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None) + ".",
    ]


def targets_markdown(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Every target of every scenario as a markdown table, with its verdict."""
    lines = [
        "| scenario | target | measured | goal | verdict |",
        "|---|---|---:|---:|---|",
    ]
    for name, data in results:
        if data["status"] != "ok":
            lines.append(f"| {name} | {data['status']}: {data['reason']} | | | |")
        for t in data.get("targets", []):
            verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
            if t.get("failed"):
                verdict += f" (does not count: {t['failed']})"
            lines.append(f"| {name} | {t['name']} | {fmt_target(t)} | {t['goal']} | {verdict} |")
    return lines


def scenario_sections(
    out: Path, results: Sequence[tuple[str, dict[str, Any]]], *, show_plots: bool
) -> list[str]:
    """Each scenario's heading, provenance, targets and tables, and its plot: shown when the
    document lies beside the PNGs (SUMMARY.md), else named by its path."""
    lines: list[str] = []
    for name, data in results:
        lines += ["", f"## {data['title']}", ""]
        run = data.get("run", {})
        how = f" by `{run['command']}` ({run['mode']})" if run else ""
        lines.append(
            f"`{name}.json`: {data['seconds']:.0f} s, finished {data['finished_at']}{how}."
        )
        lines += ["", *render(name, data)]
        if (out / f"{name}.png").is_file() and data["status"] == "ok":
            shown = f"![{name}]({name}.png)" if show_plots else f"Plot: `{out.name}/{name}.png`."
            lines += ["", shown]
    return lines


def write_summary(out: Path, *, mode: str, argv: Sequence[str]) -> Path:
    """`SUMMARY.md`: the machine, every target, then each scenario's table and plot."""
    results = scenario_results(out)
    lines = ["# Recur benchmark results", ""]
    command = "python -m scripts.bench " + " ".join(argv)
    lines.append(f"Written {time.strftime('%Y-%m-%d %H:%M %Z')} by `{command.strip()}` ({mode}).")
    lines += machine_lines(results)
    lines += [
        "",
        "Absolute numbers on a shared machine are noisy; every target is a ratio of measurements "
        "taken side by side in the same run.",
        "",
        "## Targets",
        "",
        *targets_markdown(results),
        *scenario_sections(out, results, show_plots=True),
    ]
    path = out / "SUMMARY.md"
    path.write_text("\n".join(lines) + "\n")
    return path


PAGE_HEADER = Path(__file__).with_name("performance_header.md")


def provenance(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Which run or runs the JSON files come from: when, by which command, quick or full, and
    how loaded the machine was; a page mixing runs says so."""
    runs: dict[tuple[str, str, str], list[str]] = {}
    for name, data in results:
        run = data.get("run") or {"command": "unknown command", "mode": "unknown mode"}
        commit = run.get("commit") or "a commit it did not record"
        runs.setdefault((run["command"], run["mode"], commit), []).append(name)
    finished = sorted(data["finished_at"] for _, data in results)
    lines = [
        f"The JSON files were written between {finished[0]} and {finished[-1]} by "
        + ("one run" if len(runs) == 1 else f"{len(runs)} runs")
        + ":",
        "",
    ]
    for (command, mode, commit), names in runs.items():
        lines.append(f"- `{command}` ({mode} run, at {commit}): {', '.join(names)}")
    if any(mode == "quick" for _, mode, _ in runs):
        lines += [
            "",
            "A quick run (`--quick`) measures shorter loads in fewer rounds: its ratios are "
            "noisier than a full run's, and some scenarios measure fewer levels.",
        ]
    loads = [
        data["machine"]["load_average"][0]
        for _, data in results
        if data["machine"].get("load_average")
    ]
    lines += ["", *machine_lines(results)]
    if loads:
        low, high = min(loads), max(loads)
        lines.append(f"Load average (1 min) when the scenarios finished: {low:.1f} to {high:.1f}.")
    return lines


def write_page(out: Path, page: Path) -> Path:
    """The performance page (docs/performance.md): the hand-written header kept in
    `performance_header.md`, then which run measured, every target and every scenario's table,
    all from the JSON files in `out`, so that the page cannot drift from the measurements."""
    results = scenario_results(out)
    if not results:
        raise FileNotFoundError(f"no scenario's JSON file in {out}: nothing to write {page} from")
    lines = [
        PAGE_HEADER.read_text().rstrip("\n"),
        "",
        "## The run these figures are from",
        "",
        *provenance(results),
        "",
        "## Targets",
        "",
        *targets_markdown(results),
        *scenario_sections(out, results, show_plots=False),
    ]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines) + "\n")
    return page
