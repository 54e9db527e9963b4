"""The flag tables of the docs, written from the programs' `settings` declarations.

Each table sits between markers in a page, `<!-- flags:recur-serve -->` and
`<!-- /flags:recur-serve -->`; what is between them is replaced, the rest of the page kept.

    python -m scripts.flag_tables           # rewrite the tables of README.md and docs/*.md
    python -m scripts.flag_tables --check   # exit 1 naming the pages whose tables are stale

tests/test_settings.py holds the committed pages to the generated tables.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

import settings

ROOT = Path(__file__).resolve().parent.parent
# program -> (its settings dataclass, whether it reads a --config file)
PROGRAMS = {
    "recur-serve": ("services.config:ServeConfig", True),
    "recur-train": ("trainer.config:TrainConfig", True),
    "recur": ("clients.cli:ConnectionSettings", False),
}
MARKED = re.compile(r"(<!-- flags:([a-z-]+) -->\n)(.*?)(<!-- /flags:\2 -->)", re.DOTALL)


def table(program: str) -> str:
    """The markdown flag table of `program`."""
    where, config_file = PROGRAMS[program]
    module, _, name = where.partition(":")
    return settings.markdown_table(getattr(importlib.import_module(module), name),
                                   config_file=config_file)  # fmt: skip


def render(page: str) -> str:
    """`page` with every marked table replaced by the generated one.

    Raises:
        KeyError: a marker names no program.
    """
    return MARKED.sub(lambda m: m[1] + table(m[2]) + m[4], page)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = []
    for path in pages():
        text = path.read_text()
        if (rendered := render(text)) != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(rendered)
    verb = "stale" if args.check else "rewritten"
    print(f"flag tables {verb}: {', '.join(stale) or 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
