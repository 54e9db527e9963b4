"""Your own data: files scanned once, kept as byte offsets, read line by line when used.

| task         | accepted files (layout detected by content, see `trainer/data/formats.py`)       |
|--------------|------------------------------------------------------------------------------------|
| translation  | `a.en,a.de` (two files aligned by line) or one TSV of `source<TAB>target` lines  |
| sentiment    | GLUE TSV (`sentence<TAB>label` header), or `text<TAB>label` / `label<TAB>text`   |
| autocomplete | text lines (queries, PTB, Tiny Shakespeare), or `id<TAB>text` / `id:text` lines  |

A scan reads each file once, in binary, keeping only the byte offset of every usable line, so a
file larger than memory works: the datasets below read (and the tasks tokenize) a line when it
is asked for. Malformed lines (wrong column count, bad label, undecodable bytes, empty) are
counted per reason and reported in the log and the run's summary; a file fails only when nothing
usable is left in it, with a message naming it.
"""

from __future__ import annotations

import glob
import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import numpy as np

from trainer.data.formats import Format, detect
from trainer.data.lines import DataError, LineReport, Malformed, decode, raw_lines, read_line

__all__ = [
    "ConcatLines",
    "DataError",
    "EncodedDataset",
    "LineDataset",
    "Splits",
    "carve",
    "load_splits",
    "read_labelled",
    "read_pairs",
    "read_queries",
    "scan",
    "scan_many",
    "share",
]


class LineDataset(Sequence[Any]):
    """Raw examples of a file (or of two aligned files), read on demand by byte offset.

    Args:
        paths: the file(s); one column of `offsets` each.
        offsets: `(N, len(paths))` int64 byte offsets of the usable lines.
        parse: turns the lines' texts (one per path) into a raw example.
    """

    def __init__(self, paths: tuple[str, ...], offsets: np.ndarray,
                 parse: Callable[[tuple[str, ...]], Any]) -> None:  # fmt: skip
        self.paths, self.offsets, self.parse = paths, offsets, parse
        self._handles: list[Any] = []
        self._pid = -1

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = self.offsets[index]  # raises IndexError past the end
        handles = self._open()
        return self.parse(tuple(read_line(h, int(o)) for h, o in zip(handles, row, strict=True)))

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def _open(self) -> list[Any]:
        if self._pid != os.getpid():  # a forked process gets handles of its own
            self._handles = [open(p, "rb") for p in self.paths]  # noqa: SIM115 (kept open)
            self._pid = os.getpid()
        return self._handles

    def select(self, indices: np.ndarray) -> LineDataset:
        """The examples at `indices`, in that order (a view: nothing is read)."""
        return LineDataset(self.paths, self.offsets[indices], self.parse)

    def head(self, n: int) -> LineDataset:
        return self.select(np.arange(min(n, len(self))))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": [], "_pid": -1}


class EncodedDataset(Sequence[Any]):
    """`encode(raw[i])` on demand: the tokenized view of a `LineDataset`."""

    def __init__(self, raw: Sequence[Any], encode: Callable[[Any], Any]) -> None:
        self.raw, self.encode = raw, encode

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.encode(self.raw[i]) for i in range(*index.indices(len(self)))]
        return self.encode(self.raw[index])

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]


def _scan_one(path: str, fmt: Format) -> tuple[LineDataset, LineReport]:
    offsets, report = array("q"), LineReport(path)
    for number, offset, raw in raw_lines(path):
        if number == 1 and fmt.header:
            continue
        report.lines += 1
        try:
            fmt.parse(decode(raw))
        except Malformed as e:
            report.skip(number, str(e), raw)
            continue
        offsets.append(offset)
        report.usable += 1
    table = np.frombuffer(offsets, dtype=np.int64).reshape(-1, 1)
    return LineDataset((path,), table, lambda texts: fmt.parse(texts[0])), report


def _parse_aligned(texts: tuple[str, ...]) -> tuple[str, str]:
    return texts[0].strip(), texts[1].strip()


def _scan_aligned(source: str, target: str) -> tuple[LineDataset, LineReport]:
    offsets, report = array("q"), LineReport(f"{source},{target}")
    counts = [0, 0]
    for a, b in zip_longest(raw_lines(source), raw_lines(target)):
        counts = [counts[0] + (a is not None), counts[1] + (b is not None)]
        if a is None or b is None:
            continue
        report.lines += 1
        try:
            decode(a[2])
            decode(b[2])
        except Malformed as e:
            report.skip(a[0], str(e))
            continue
        offsets.extend((a[1], b[1]))
        report.usable += 1
    if counts[0] != counts[1]:
        raise DataError(f"{source} has {counts[0]} lines but {target} has {counts[1]}")
    table = np.frombuffer(offsets, dtype=np.int64).reshape(-1, 2)
    return LineDataset((source, target), table, _parse_aligned), report


def scan(kind: str, spec: str, *, num_classes: int = 2) -> tuple[LineDataset, LineReport, str]:
    """Index the usable lines of `spec` for a task reading `kind`.

    Returns:
        The dataset of raw examples, the report of the scan, and the layout's name.

    Raises:
        DataError: a missing or UTF-16 file, misaligned files, or no usable line at all.
    """
    paths = [p for p in spec.split(",") if p]
    if kind == "pairs" and len(paths) == 2:
        dataset, report = _scan_aligned(paths[0], paths[1])
        layout = "aligned files"
    elif len(paths) == 1:
        fmt = detect(kind, paths[0], num_classes=num_classes)
        dataset, report = _scan_one(paths[0], fmt)
        layout = fmt.name
    else:
        raise DataError(f"expected one file or two aligned files 'a.en,a.de', got {spec!r}")
    report.check_usable()
    return dataset, report, layout


@dataclass
class Splits:
    """Training, validation and (optional) test examples read from files, and what their scans
    found."""

    train: Examples
    valid: Examples
    description: str  # for the log and the manifest
    reports: list[LineReport]
    test: Examples | None = None


def share(spec: str) -> int | float | None:
    """`"2000"` -> 2000 lines, `"10%"` -> 0.1 of the lines; None when `spec` names a file."""
    text = spec.strip()
    if text.endswith("%"):
        try:
            fraction = float(text[:-1]) / 100
        except ValueError:
            return None
        if not 0 < fraction < 1:
            raise DataError(f"a share of --train must be between 0% and 100%, got {spec!r}")
        return fraction
    if not text.isdigit():
        return None
    if int(text) == 0:
        raise DataError(f"a count of --train lines to carve out must be at least 1, got {spec!r}")
    return int(text)


def _count(amount: int | float, n: int) -> int:
    return max(1, int(n * amount)) if isinstance(amount, float) else amount


def carve(dataset: Examples, amounts: list[int | float], *, seed: int, at: str = "random",
          spec: str = "--train") -> tuple[Examples, list[Examples]]:  # fmt: skip
    """Cut `amounts` (line counts or shares) out of `dataset`: `(rest, [part, ...])`.

    `at="random"` draws the parts' lines with `seed` (the first part first, each in file order);
    `at="end"` takes them from the end of the file, the first part last (a test split after the
    validation split, as a time-ordered corpus is split). The same arguments always carve the
    same lines, so `recur-eval --data held-out` finds a run's split again.
    """
    n = len(dataset)
    counts = [_count(a, n) for a in amounts]
    if n - sum(counts) < 1:
        raise DataError(f"{spec}: {n:,} usable line(s), too few to carve out {sum(counts):,}")
    order = np.arange(n)[::-1] if at == "end" else np.random.default_rng(seed).permutation(n)
    parts, used = [], 0
    for count in counts:
        parts.append(dataset.select(np.sort(order[used : used + count])))
        used += count
    return dataset.select(np.sort(order[used:])), parts


class ConcatLines(Sequence[Any]):
    """Several scanned files as one dataset (a query log spread over files), read on demand."""

    def __init__(self, parts: list[LineDataset], rows: np.ndarray | None = None) -> None:
        self.parts = parts
        self.starts = np.cumsum([0, *(len(p) for p in parts)])
        self.rows = np.arange(self.starts[-1]) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        at = int(self.rows[index])
        part = int(np.searchsorted(self.starts, at, side="right")) - 1
        return self.parts[part][at - int(self.starts[part])]

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def select(self, indices: np.ndarray) -> ConcatLines:
        return ConcatLines(self.parts, self.rows[indices])

    def head(self, n: int) -> ConcatLines:
        return self.select(np.arange(min(n, len(self))))


Examples = LineDataset | ConcatLines


def _paths(spec: str) -> list[str]:
    """The files of a comma-separated list whose items may be glob patterns."""
    found: list[str] = []
    for item in (p for p in spec.split(",") if p):
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise DataError(f"{item}: the pattern matches no file")
        found.extend(matches)
    return found


def scan_many(kind: str, spec: str, *, num_classes: int = 2
              ) -> tuple[Examples, list[LineReport], str]:  # fmt: skip
    """`scan`, where texts and labelled rows may come from several files (a comma-separated list
    or glob patterns), each with its own detected layout; translation pairs keep `a.en,a.de`."""
    paths = _paths(spec)
    if kind == "pairs" or len(paths) == 1:
        dataset, report, layout = scan(kind, ",".join(paths), num_classes=num_classes)
        return dataset, [report], layout
    scanned = [scan(kind, path, num_classes=num_classes) for path in paths]
    layouts = sorted({layout for _, _, layout in scanned})
    return (
        ConcatLines([dataset for dataset, _, _ in scanned]),
        [report for _, report, _ in scanned],
        f"{len(paths)} files: {', '.join(layouts)}",
    )


def carved_amounts(valid: str, test: str) -> dict[str, int | float]:
    """The splits `load_splits` carves out of `train`, test first, with their share or count:
    `valid` defaults to 5% of `train`, `test` to none; a split that names files is not carved."""
    return {
        name: amount
        for name, spec in (("test", test), ("valid", valid or "5%"))
        if (amount := share(spec)) is not None
    }


def load_splits(kind: str, train: str, valid: str = "", test: str = "", *, seed: int = 0,
                carve_at: str = "random", num_classes: int = 2,
                log: Callable[[str], None] | None = print) -> Splits:  # fmt: skip
    """Scan `train`, `valid` and `test` and log what each scan found.

    `valid` and `test` each name file(s), or a share (`"10%"`) or count (`"2000"`) of `train`'s
    lines to carve out (`carve`); `valid` defaults to 5% of `train`, `test` to none.
    """
    train_ds, reports, layout = scan_many(kind, train, num_classes=num_classes)
    amounts = carved_amounts(valid, test)
    carved = list(amounts)
    parts: dict[str, Examples | None] = {"test": None}
    if carved:
        train_ds, cut = carve(train_ds, [amounts[name] for name in carved], seed=seed,
                              at=carve_at, spec=train)  # fmt: skip
        parts |= dict(zip(carved, cut, strict=True))
    described = [train]
    for name, spec in (("valid", valid), ("test", test)):
        if name in carved:
            described.append(f"{name}: {spec or '5%'} of it ({carve_at})")
        elif spec:
            parts[name], found, _ = scan_many(kind, spec, num_classes=num_classes)
            reports.extend(found)
            described.append(f"{name}: {spec}")
    description = " | ".join(described)
    skipped = sum(r.num_skipped for r in reports)
    description += f" [{layout}{f'; {skipped:,} malformed lines skipped' if skipped else ''}]"
    if log is not None:
        for report in reports:
            log(f"data: {report.summary()}")
            for line in report.shown:
                log(f"data: skipped {line}")
    valid_ds = parts["valid"]
    assert valid_ds is not None
    return Splits(train_ds, valid_ds, description, reports, test=parts["test"])


def read_pairs(spec: str) -> list[tuple[str, str]]:
    """Every usable `(source, target)` pair of `spec` (`a.en,a.de` or a TSV), in memory."""
    return list(scan_many("pairs", spec)[0])


def read_labelled(path: str, *, num_classes: int = 2) -> list[tuple[str, int]]:
    """Every usable `(text, label)` row of a labelled TSV, in memory."""
    return list(scan_many("labelled", path, num_classes=num_classes)[0])


def read_queries(path: str) -> list[str]:
    """Every usable text line (ids dropped), in memory."""
    return list(scan_many("text", path)[0])
