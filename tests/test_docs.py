"""The documents say what the code does: the README's first commands, its links, and the server
flag table of docs/serving.md against `recur-serve`'s own parser."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_starts_with_make_demo_and_make_test() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    first_block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert [line.split("#")[0].strip() for line in first_block] == ["make demo", "make test"]


def test_every_relative_link_of_the_documents_exists() -> None:
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {target}")
    assert missing == []


def test_the_serving_page_names_every_server_flag() -> None:
    """A flag added to `recur-serve` without a line in the table fails here, naming it."""
    from services.config import build_parser

    page = (ROOT / "docs" / "serving.md").read_text()
    table = page.split("## Server flags", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(--[a-z0-9-]+)", table))
    flags = {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert flags - documented - {"--metrics"} == set(), "missing from docs/serving.md"
    assert documented - flags == set(), "documented but not a flag of recur-serve"
