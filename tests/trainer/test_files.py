"""Your own data: layouts detected by content, malformed lines counted (never fatal), streaming."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from trainer.data import files
from trainer.data.files import DataError


def write(path: Path, text: str | bytes) -> str:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return str(path)


def test_aligned_files_and_tsv_give_the_same_pairs(tmp_path: Path) -> None:
    en = write(tmp_path / "a.en", "a dog\r\nthe cat\n")
    de = write(tmp_path / "a.de", "ein hund\ndie katze\n")
    tsv = write(tmp_path / "pairs.tsv", "\ufeffa dog\tein hund\nthe cat\tdie katze\n")
    expected = [("a dog", "ein hund"), ("the cat", "die katze")]
    assert files.read_pairs(f"{en},{de}") == expected
    assert files.read_pairs(tsv) == expected  # a UTF-8 byte-order mark is not part of the text


@pytest.mark.parametrize(
    ("text", "expected", "layout", "reason"),
    [
        ("sentence\tlabel\ngreat film \t1\nawful\t0\n", [("great film", 1), ("awful", 0)],
         "GLUE TSV", "GLUE header skipped, SST-2's trailing space stripped"),
        ("label\tsentence\n1\tgreat film\n", [("great film", 1)], "GLUE TSV", "header order"),
        ("1\tgreat film\n0\tawful\n", [("great film", 1), ("awful", 0)], "TSV label<TAB>text",
         "label first"),
        ("great film\t1\n", [("great film", 1)], "TSV text<TAB>label", "no header"),
    ],
)  # fmt: skip
def test_labelled_layouts(tmp_path: Path, text: str, expected: list[tuple[str, int]],
                          layout: str, reason: str) -> None:  # fmt: skip
    dataset, report, found = files.scan("labelled", write(tmp_path / "d.tsv", text))
    assert (list(dataset), found) == (expected, layout), reason
    assert report.usable == report.lines == len(expected), reason


@pytest.mark.parametrize(
    ("text", "expected", "layout", "reason"),
    [
        ("12\tweather in paris\n13\t cheap flights\r\n", ["weather in paris", "cheap flights"],
         "id<TAB>text", "MS MARCO: ids dropped, leading space and CRLF stripped"),
        ("1:after school\n20001:1:obama family tree\n", ["after school", "obama family tree"],
         "id:text", "TREC MQ ids with and without a priority"),
        (" pierre <unk> N years old\nthe end\n", ["pierre <unk> N years old", "the end"],
         "text lines", "PTB: plain lines"),
    ],
)  # fmt: skip
def test_text_layouts(tmp_path: Path, text: str, expected: list[str], layout: str,
                      reason: str) -> None:  # fmt: skip
    dataset, _, found = files.scan("text", write(tmp_path / "q.txt", text))
    assert (list(dataset), found) == (expected, layout), reason


@pytest.mark.parametrize(
    ("kind", "text", "usable", "skipped", "reason"),
    [
        ("pairs", b"a\tb\nonly one\nc\td\te\nf\tg\n", [("a", "b"), ("f", "g")],
         {"wrong column count (expected 2)": 2}, "TSV with too few and too many columns"),
        ("labelled", b"good\t1\nbad\tyes\nmeh\t7\n\nok\t0\n", [("good", 1), ("ok", 0)],
         {"label is not an integer": 1, "label not in 0..1": 1, "empty line": 1},
         "bad labels and an empty line"),
        ("text", b"caf\xc3\xa9\nna\xefve\n\x00x\x00\n  \nok\n", ["caf\u00e9", "ok"],
         {"undecodable bytes (not UTF-8)": 1, "NUL bytes (not UTF-8 text)": 1, "empty line": 1},
         "a Latin-1 line, a UTF-16-looking line and a blank line among UTF-8 lines"),
    ],
)  # fmt: skip
def test_malformed_lines_are_counted_not_fatal(tmp_path: Path, kind: str, text: bytes,
                                               usable: list[object], skipped: dict[str, int],
                                               reason: str) -> None:  # fmt: skip
    path = write(tmp_path / "d.txt", text)
    dataset, report, _ = files.scan(kind, path)
    assert list(dataset) == usable, reason
    assert dict(report.skipped) == skipped, reason
    assert report.usable == len(usable) and report.lines == len(usable) + sum(skipped.values())
    assert f"{path}: {len(usable)} usable of {report.lines} lines" in report.summary()
    assert report.shown[0].startswith(f"{path}:")  # the log quotes the file and line number


@pytest.mark.parametrize(
    ("kind", "text", "message", "reason"),
    [
        ("text", b"", "empty file", "an empty file"),
        ("pairs", b"one column\nanother\n",
         r"no usable lines: all 2 are malformed \(wrong column count \(expected 2\): 2\)",
         "a TSV with the wrong column count everywhere"),
        ("labelled", "sentence\tlabel\nbien\t1\n".encode("utf-16"),
         "UTF-16 encoded", "a UTF-16 file (byte-order mark)"),
        ("text", "d\u00e9j\u00e0 vu\nna\u00efve\n".encode("latin-1"),
         r"no usable lines: all 2 are malformed \(undecodable bytes \(not UTF-8\): 2\)",
         "a Latin-1 file"),
    ],
)  # fmt: skip
def test_nothing_usable_fails_naming_the_file(tmp_path: Path, kind: str, text: bytes,
                                              message: str, reason: str) -> None:  # fmt: skip
    path = write(tmp_path / "bad.tsv", text)
    with pytest.raises(DataError, match=f"^{path}: {message}"):
        files.scan(kind, path)


def test_misaligned_files(tmp_path: Path) -> None:
    en, de = write(tmp_path / "a.en", "a\nb\n"), write(tmp_path / "a.de", "x\n")
    with pytest.raises(DataError, match=r"has 2 lines but .* has 1"):
        files.read_pairs(f"{en},{de}")


def test_an_empty_line_in_one_aligned_file_skips_the_pair(tmp_path: Path) -> None:
    en, de = write(tmp_path / "a.en", "a\nb\nc\n"), write(tmp_path / "a.de", "x\n\nz\n")
    dataset, report, _ = files.scan("pairs", f"{en},{de}")
    assert list(dataset) == [("a", "x"), ("c", "z")]  # the alignment after the gap holds
    assert dict(report.skipped) == {"empty line": 1}


def test_scan_keeps_offsets_not_lines(tmp_path: Path) -> None:
    """A 4 MB file is indexed in a fraction of its size; lines are read back on demand."""
    lines = [f"{i}\tquery number {i} " + "x" * 60 for i in range(50_000)]
    path = write(tmp_path / "big.tsv", "\n".join(lines) + "\n")
    tracemalloc.start()
    dataset, _, _ = files.scan("text", path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(dataset) == 50_000 and dataset.offsets.nbytes == 8 * 50_000
    assert peak < 1_500_000, f"scan peaked at {peak:,} bytes for a {Path(path).stat().st_size:,}"
    assert dataset[31_337] == lines[31_337].split("\t")[1].strip()
    assert dataset.select([7, 3])[1] == lines[3].split("\t")[1].strip()  # type: ignore[arg-type]


def test_hold_out_is_seeded_and_disjoint(tmp_path: Path) -> None:
    path = write(tmp_path / "q.txt", "".join(f"query {i}\n" for i in range(200)))
    a = files.load_splits("text", path, seed=3, log=None)
    b = files.load_splits("text", path, seed=3, log=None)
    assert list(a.valid) == list(b.valid) and len(a.valid) == 10 and len(a.train) == 190
    assert not set(a.valid) & set(a.train)
    assert a.description == f"{path} | valid: 5% of it (random) [text lines]"


def test_splits_log_what_was_skipped(tmp_path: Path) -> None:
    train = write(tmp_path / "t.tsv", "a\tb\nbroken\nc\td\n")
    valid = write(tmp_path / "v.tsv", "e\tf\n")
    logged: list[str] = []
    splits = files.load_splits("pairs", train, valid, log=logged.append)
    layout = "TSV source<TAB>target (2 columns)"
    assert splits.description.endswith(f"[{layout}; 1 malformed lines skipped]")
    assert logged[0] == (
        f"data: {train}: 2 usable of 3 lines, 1 skipped (wrong column count (expected 2): 1)"
    )
    assert logged[1] == f"data: skipped {train}:2: wrong column count (expected 2): b'broken'"
    assert [r.to_dict()["usable"] for r in splits.reports] == [2, 1]


def test_one_usable_line_is_too_few_to_hold_out(tmp_path: Path) -> None:
    path = write(tmp_path / "q.txt", "only\n")
    with pytest.raises(DataError, match=f"{path}: 1 usable line"):
        files.load_splits("text", path, log=None)


def test_real_data_sets_are_read(shared_data: Path) -> None:
    """The layouts of ../shared/data: Multi30k, Tatoeba, SST-2, TREC MQ with Latin-1 lines."""
    pairs, _, layout = files.scan("pairs", f"{shared_data}/multi30k/val.en,"
                                           f"{shared_data}/multi30k/val.de")  # fmt: skip
    assert (len(pairs), layout) == (1014, "aligned files")
    tatoeba, _, layout = files.scan("pairs", str(shared_data / "tatoeba-eng-fra" / "fra.txt"))
    assert tatoeba[0] == ("Go.", "Va !") and len(tatoeba) == 140_787
    rows = files.read_labelled(str(shared_data / "sst2" / "dev.tsv"))
    assert len(rows) == 872 and {label for _, label in rows} == {0, 1}
    mq = str(shared_data / "search-queries" / "topics.mq.1-10000.txt")
    queries, report, layout = files.scan("text", mq)
    assert layout == "id:text" and queries[0] == "after school program evaluation"
    assert dict(report.skipped) == {"undecodable bytes (not UTF-8)": 1} and len(queries) == 9999
