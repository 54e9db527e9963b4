"""Detect a data file's layout from its first lines, and parse each line of that layout.

| kind       | layouts detected                                                                  |
|------------|-----------------------------------------------------------------------------------|
| `pairs`    | `source<TAB>target` (more columns, as in newer Tatoeba exports, if most have them) |
| `labelled` | GLUE TSV with a `sentence<TAB>label` header; `text<TAB>label`; `label<TAB>text`   |
| `text`     | one text a line; `id<TAB>text` (MS MARCO, TREC DL); `id:text`, `id:n:text` (MQ)   |

The layout is what most of the sampled lines look like; a line that does not fit it is
`Malformed` (wrong column count, a label that is not an integer class), counted and skipped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.lines import Malformed, decode, raw_lines

SAMPLE = 200  # lines read to detect the layout
MAJORITY = 0.8  # share of sampled lines that must fit an id layout
_TAB_ID = re.compile(r"\s*\d+\t")
_COLON_ID = re.compile(r"\d+(?::\d+)?:")


@dataclass(frozen=True)
class Format:
    """A detected layout: its name (for the log) and how to parse one line of it."""

    name: str
    parse: Callable[[str], Any]
    header: bool = False  # the first line is a header, not an example


def sample(path: str | Path) -> list[str]:
    """Up to `SAMPLE` usable lines from the start of `path`."""
    lines = []
    for _, _, raw in raw_lines(path):
        try:
            lines.append(decode(raw))
        except Malformed:
            continue
        if len(lines) == SAMPLE:
            break
    return lines


def _columns(line: str, expected: int) -> list[str]:
    cols = [c.strip() for c in line.split("\t")]
    if len(cols) != expected:
        raise Malformed(f"wrong column count (expected {expected})")
    if not all(cols):
        raise Malformed("empty column")
    return cols


def _most_common_width(lines: list[str]) -> int:
    widths = Counter(line.count("\t") + 1 for line in lines)
    return widths.most_common(1)[0][0] if widths else 2


def pairs_format(lines: list[str]) -> Format:
    """`source<TAB>target[<TAB>…]` with the column count most lines have (at least 2)."""
    width = max(_most_common_width(lines), 2)

    def parse(line: str) -> tuple[str, str]:
        cols = _columns(line, width)
        return cols[0], cols[1]

    return Format(f"TSV source<TAB>target ({width} columns)", parse)


def labelled_format(lines: list[str], num_classes: int) -> Format:
    """A GLUE header names the columns; otherwise the integer column is the label."""
    header = lines[0].lower().split("\t") if lines else []
    if "sentence" in header and "label" in header:
        text_col, label_col, width, name = (
            header.index("sentence"), header.index("label"), len(header), "GLUE TSV",
        )  # fmt: skip
    else:
        firsts = sum(line.split("\t")[0].strip().isdigit() for line in lines)
        lasts = sum(line.split("\t")[-1].strip().isdigit() for line in lines)
        label_col = 0 if firsts > lasts else 1
        text_col, width = 1 - label_col, 2
        name = "TSV label<TAB>text" if label_col == 0 else "TSV text<TAB>label"

    def parse(line: str) -> tuple[str, int]:
        cols = _columns(line, width)
        label = cols[label_col]
        if not label.isdigit():
            raise Malformed("label is not an integer")
        if int(label) >= num_classes:
            raise Malformed(f"label not in 0..{num_classes - 1}")
        return cols[text_col], int(label)

    return Format(name, parse, header=name == "GLUE TSV")


def text_format(lines: list[str]) -> Format:
    """Plain lines, or lines behind a numeric id when most sampled lines have one."""
    n = max(len(lines), 1)
    if sum(bool(_TAB_ID.match(line)) for line in lines) >= MAJORITY * n:

        def parse_tab(line: str) -> str:
            cols = line.split("\t")
            if len(cols) != 2 or not cols[0].strip().isdigit():
                raise Malformed("wrong column count (expected id<TAB>text)")
            return _text(cols[1])

        return Format("id<TAB>text", parse_tab)
    if sum(bool(_COLON_ID.match(line)) for line in lines) >= MAJORITY * n:

        def parse_colon(line: str) -> str:
            match = _COLON_ID.match(line)
            if match is None:
                raise Malformed("no id: prefix")
            return _text(line[match.end() :])

        return Format("id:text", parse_colon)
    return Format("text lines", _text)


def _text(text: str) -> str:
    text = text.strip()
    if not text:
        raise Malformed("empty text")
    return text


def detect(kind: str, path: str | Path, *, num_classes: int = 2) -> Format:
    """The layout of `path` for a task reading `kind` (`pairs`, `labelled` or `text`)."""
    lines = sample(path)
    if kind == "pairs":
        return pairs_format(lines)
    if kind == "labelled":
        return labelled_format(lines, num_classes)
    if kind == "text":
        return text_format(lines)
    raise ValueError(f"unknown data kind {kind!r}")
