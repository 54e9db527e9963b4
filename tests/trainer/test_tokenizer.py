"""Tokenizers: char, word and BPE, trained on the training split, special ids fixed at 0-3."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from trainer.config import TrainConfig
from trainer.data.tokenizer import SPECIAL_TOKENS, TOKENIZERS, build_tokenizer, is_character_level
from trainer.metrics import normal_form
from trainer.tasks import get_task

TEXTS = ["the cat sat on the mat.", "the dog sat on the log", "a cat, and a dog", "Café au lait"]


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_special_ids_are_the_same_in_every_tokenizer(kind: str) -> None:
    tokenizer = build_tokenizer(kind, iter(TEXTS))  # a stream is enough
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("kind", "text", "decoded", "reason"),
    [
        ("char", "the cat", "the cat", "characters fuse back"),
        ("bpe", "the cat sat", "the cat sat", "Metaspace restores the spaces"),
        ("bpe", "Cafe\u0301 au lait", "Caf\u00e9 au lait", "NFKC composes e + accent"),
        ("word", "The cat, sat", "the cat , sat", "words, lowercased, joined by spaces"),
    ],
)
def test_decoding(kind: str, text: str, decoded: str, reason: str) -> None:
    tokenizer = build_tokenizer(kind, TEXTS)
    assert tokenizer.decode(tokenizer.encode(text).ids) == decoded, reason


def test_bpe_merges_frequent_pairs_up_to_the_vocabulary_size() -> None:
    """4 special tokens and 11 symbols (10 letters and `▁`) make 15; each merge adds one, and
    the text has 18 pairs worth merging."""
    texts = ["lower lowest newer newest wider widest"] * 50
    small, large = (build_tokenizer("bpe", texts, vocab_size=n) for n in (30, 60))
    assert small.get_vocab_size() == 30  # the merges stopped at the size asked for
    assert large.get_vocab_size() == 33  # ran out of pairs to merge first
    assert small.encode("lowest").tokens == ["▁lowe", "st"]
    assert large.encode("lowest").tokens == ["▁lowest"]
    assert not is_character_level(large) and is_character_level(build_tokenizer("char", TEXTS))


def test_word_vocabulary_keeps_the_most_frequent_words() -> None:
    tokenizer = build_tokenizer("word", ["a a a b b c"], vocab_size=6)  # 4 special + 2 words
    assert tokenizer.get_vocab_size() == 6
    assert tokenizer.encode("a b c").ids[2] == tokenizer.token_to_id("[UNK]")


def test_bleu_references_keep_spaces_for_bpe_and_split_words_for_word() -> None:
    bpe, word = build_tokenizer("bpe", TEXTS), build_tokenizer("word", TEXTS)
    assert normal_form(bpe, "The cat, sat.") == "The cat, sat."
    assert normal_form(word, "The cat, sat.") == "the cat , sat ."


def write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_bpe_is_trained_on_the_training_split_only(tmp_path: Path) -> None:
    """A word that occurs only in --valid never becomes a token; tokenizer.json is saved."""
    from trainer.cli import run

    train = write(tmp_path / "train.txt", ["weather in paris", "weather in rome"] * 40)
    valid = write(tmp_path / "valid.txt", ["zanzibarzanzibar weather"])
    cfg = TrainConfig(task="autocomplete", data="files", train=train, valid=valid, epochs=1,
                      tokenizer="bpe", vocab_size=40, workers=0, embed_dim=8, hidden_size=8,
                      eval_completions=2, diagnose_every=0, log_every=1000, dry_run=True,
                      run_dir=str(tmp_path / "runs"), run_name="bpe")  # fmt: skip
    data = get_task("autocomplete").prepare(cfg)
    assert data.tokenizer.get_vocab_size() <= 40
    assert not any("zan" in token for token in data.tokenizer.get_vocab())
    run(cfg)  # trains a step and exports: the BPE tokenizer ships in the bundle
    saved = Tokenizer.from_file(str(tmp_path / "runs" / "bpe" / "tokenizer.json"))
    assert saved.encode("weather in paris").ids == data.tokenizer.encode("weather in paris").ids


def test_bits_per_char_of_a_subword_model_count_characters(tmp_path: Path) -> None:
    """nats summed over the tokens / characters (plus one [EOS] per line) / ln 2."""
    import torch

    train = write(tmp_path / "train.txt", ["weather in paris", "cheap flights"] * 20)
    valid = write(tmp_path / "valid.txt", ["weather in rome", "cheap hotels"])
    cfg = TrainConfig(task="autocomplete", data="files", train=train, valid=valid,
                      tokenizer="bpe", vocab_size=40, eval_completions=0)  # fmt: skip
    task = get_task("autocomplete")
    data = task.prepare(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg, data.tokenizer.get_vocab_size()).eval()
    metrics = task.evaluate(model, data)
    targets = sum(len(ids) - 1 for ids in data.valid)  # every token after [BOS], [EOS] included
    chars = len("weather in rome") + 1 + len("cheap hotels") + 1
    expected = metrics["valid_loss"] * targets / chars / math.log(2)
    assert metrics["valid_bits_per_char"] == pytest.approx(expected)
    assert targets < chars  # subwords: fewer predictions than characters


def test_unknown_tokenizer_is_refused() -> None:
    with pytest.raises(ValueError, match="--tokenizer must be one of char, word, whitespace, bpe"):
        TrainConfig(tokenizer="sentencepiece").validate()
