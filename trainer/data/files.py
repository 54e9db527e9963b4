"""Your own data: read training files and detect their format by content.

| task         | accepted files                                                                  |
|--------------|---------------------------------------------------------------------------------|
| translation  | `a.en,a.de` (two files aligned by line) or one TSV of `source<TAB>target` lines |
| sentiment    | GLUE TSV (`sentence<TAB>label` header), or `text<TAB>label` / `label<TAB>text`  |
| autocomplete | text, one query per line, or `id<TAB>query` lines (the TREC / MS MARCO layout)  |

Files are read as UTF-8 with undecodable bytes replaced; CRLF line ends are accepted.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file that cannot be used, with a message naming the file and the problem."""


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of `path`, stripped of line ends and surrounding whitespace."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    text = p.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_pairs(spec: str) -> list[tuple[str, str]]:
    """Translation pairs from `src,tgt` aligned files or one `source<TAB>target` TSV."""
    paths = [p for p in spec.split(",") if p]
    if len(paths) == 2:
        src, tgt = read_lines(paths[0]), read_lines(paths[1])
        if len(src) != len(tgt):
            raise DataError(f"{paths[0]} has {len(src)} lines but {paths[1]} has {len(tgt)}")
        return list(zip(src, tgt, strict=True))
    if len(paths) != 1:
        raise DataError(f"expected one TSV or two aligned files separated by a comma, got {spec!r}")
    pairs = []
    for n, line in enumerate(read_lines(paths[0]), 1):
        cols = line.split("\t")
        if len(cols) < 2:
            raise DataError(f"{paths[0]}:{n}: expected source<TAB>target, got {line[:60]!r}")
        pairs.append((cols[0].strip(), cols[1].strip()))
    return pairs


def read_labelled(path: str) -> list[tuple[str, int]]:
    """(text, label) rows from a GLUE TSV or two-column TSV with an integer label column."""
    lines = read_lines(path)
    if lines and lines[0].lower().split("\t")[:2] == ["sentence", "label"]:
        lines = lines[1:]
    rows = []
    for n, line in enumerate(lines, 1):
        cols = [c.strip() for c in line.split("\t")]
        if len(cols) != 2:
            raise DataError(f"{path}:{n}: expected two tab-separated columns, got {len(cols)}")
        text, label = (cols[0], cols[1]) if cols[1].isdigit() else (cols[1], cols[0])
        if not label.isdigit():
            raise DataError(f"{path}:{n}: no integer label column in {line[:60]!r}")
        rows.append((text, int(label)))
    return rows


def read_queries(path: str) -> list[str]:
    """Query lines; `id<TAB>query` lines keep only the query."""
    queries = []
    for line in read_lines(path):
        cols = line.split("\t")
        query = cols[1] if len(cols) == 2 and cols[0].strip().isdigit() else line
        if query.strip():
            queries.append(query.strip())
    return queries
