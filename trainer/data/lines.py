"""Streamed lines of a data file: byte offsets, strict UTF-8, and a count of what was skipped.

Files are read in binary, one line at a time, so a file larger than memory can be scanned; each
line's byte offset is what a dataset keeps to read it again later. A line is usable when it is
valid UTF-8 without NUL bytes and not blank; a UTF-8 byte-order mark and CRLF line ends are
accepted. Everything else is counted in a `LineReport` by reason, never raised.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SHOWN = 3  # malformed lines quoted per file in the log


class DataError(ValueError):
    """A data file that cannot be used, with a message naming the file and the problem."""


class Malformed(ValueError):
    """One unusable line; the message is the reason it is counted under."""


@dataclass
class LineReport:
    """What a scan of one data file (or pair of aligned files) found."""

    path: str
    lines: int = 0
    usable: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    shown: list[str] = field(default_factory=list)  # the first few skipped lines, for the log

    def skip(self, number: int, reason: str, raw: bytes | str = b"") -> None:
        self.skipped[reason] += 1
        if len(self.shown) < SHOWN:
            preview = f": {raw[:60]!r}" if raw else ""
            self.shown.append(f"{self.path}:{number}: {reason}{preview}")

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line for the log: usable lines, and the skipped ones by reason."""
        text = f"{self.path}: {self.usable:,} usable of {self.lines:,} lines"
        if self.skipped:
            reasons = "; ".join(f"{reason}: {n:,}" for reason, n in self.skipped.most_common())
            text += f", {self.num_skipped:,} skipped ({reasons})"
        return text

    def check_usable(self) -> None:
        """Raise DataError when the scan left nothing to train or validate on."""
        if self.lines == 0:
            raise DataError(f"{self.path}: empty file")
        if self.usable == 0:
            reasons = "; ".join(f"{reason}: {n:,}" for reason, n in self.skipped.most_common())
            raise DataError(
                f"{self.path}: no usable lines: all {self.lines:,} are malformed ({reasons})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "lines": self.lines,
            "usable": self.usable,
            "skipped": dict(self.skipped.most_common()),
        }


def check_file(path: str | Path) -> Path:
    """`path` as a Path; DataError when it is missing or UTF-16 encoded."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    with p.open("rb") as f:
        head = f.read(2)
    if head in UTF16_BOMS:
        raise DataError(f"{p}: UTF-16 encoded (byte-order mark); convert it to UTF-8")
    return p


def raw_lines(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """`(line number from 1, byte offset, bytes without the line end)` of every line."""
    p = check_file(path)
    offset = 0
    with p.open("rb") as f:
        for number, raw in enumerate(f, 1):
            start = offset
            offset += len(raw)
            if number == 1 and raw.startswith(UTF8_BOM):
                raw, start = raw[len(UTF8_BOM) :], start + len(UTF8_BOM)
            yield number, start, raw.rstrip(b"\r\n")


def decode(raw: bytes) -> str:
    """The text of one line; Malformed when it is not UTF-8 text or blank."""
    if b"\x00" in raw:
        raise Malformed("NUL bytes (not UTF-8 text)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("undecodable bytes (not UTF-8)") from None
    if not text.strip():
        raise Malformed("empty line")
    return text


def read_line(handle: Any, offset: int) -> str:
    """The text of the line at `offset` of an open binary file (one a scan found usable)."""
    handle.seek(offset)
    return decode(handle.readline().rstrip(b"\r\n"))
