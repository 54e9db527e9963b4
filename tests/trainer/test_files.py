"""Your own data: formats detected by content, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data import files


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_aligned_files_and_tsv_give_the_same_pairs(tmp_path: Path) -> None:
    en = write(tmp_path / "a.en", "a dog\r\nthe cat\n")
    de = write(tmp_path / "a.de", "ein hund\ndie katze\n")
    tsv = write(tmp_path / "pairs.tsv", "a dog\tein hund\nthe cat\tdie katze\n")
    expected = [("a dog", "ein hund"), ("the cat", "die katze")]
    assert files.read_pairs(f"{en},{de}") == expected
    assert files.read_pairs(tsv) == expected


@pytest.mark.parametrize(
    ("text", "expected", "reason"),
    [
        ("sentence\tlabel\ngreat film\t1\nawful\t0\n", [("great film", 1), ("awful", 0)], "GLUE"),
        ("1\tgreat film\n0\tawful\n", [("great film", 1), ("awful", 0)], "label first"),
        ("great film\t1\n", [("great film", 1)], "no header"),
    ],
)
def test_labelled_formats(tmp_path: Path, text: str, expected: list[tuple[str, int]],
                          reason: str) -> None:  # fmt: skip
    assert files.read_labelled(write(tmp_path / "d.tsv", text)) == expected, reason


def test_queries_drop_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "q.tsv", "12\tweather in paris\n13\t cheap flights\nplain query\n")
    assert files.read_queries(path) == ["weather in paris", "cheap flights", "plain query"]


@pytest.mark.parametrize(
    ("reader", "text", "message", "reason"),
    [
        (files.read_pairs, "only one column\n", "expected source<TAB>target", "no tab"),
        (files.read_labelled, "a\tb\tc\n", "expected two tab-separated columns", "three columns"),
        (files.read_labelled, "good\tyes\n", "no integer label column", "no label"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, reader: object, text: str,
                                            message: str, reason: str) -> None:  # fmt: skip
    path = write(tmp_path / "bad.tsv", text)
    with pytest.raises(files.DataError, match=f"{path}:1: {message}"):
        reader(path)  # type: ignore[operator]


def test_misaligned_files(tmp_path: Path) -> None:
    en, de = write(tmp_path / "a.en", "a\nb\n"), write(tmp_path / "a.de", "x\n")
    with pytest.raises(files.DataError, match=r"has 2 lines but .* has 1"):
        files.read_pairs(f"{en},{de}")


def test_real_data_sets_are_read(shared_data: Path) -> None:
    """The layouts of ../shared/data: Multi30k aligned files, SST-2 GLUE TSV, TREC/MS MARCO ids."""
    pairs = files.read_pairs(f"{shared_data}/multi30k/val.en,{shared_data}/multi30k/val.de")
    assert len(pairs) == 1014
    rows = files.read_labelled(str(shared_data / "sst2" / "dev.tsv"))
    assert len(rows) == 872 and {label for _, label in rows} == {0, 1}
    query_files = sorted((shared_data / "search-queries").iterdir())
    queries = files.read_queries(str(query_files[0]))
    assert queries and not any("\t" in q for q in queries)
