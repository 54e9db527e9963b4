"""Hugging Face `tokenizers` built from the training text: the same file ships in the bundle.

Ids 0-3 are the special tokens in every tokenizer Recur builds, so models and services agree on
them without looking them up: `[PAD]` 0, `[UNK]` 1, `[BOS]` 2, `[EOS]` 3.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def _train(tokenizer: Tokenizer, texts: Iterable[str], *, min_frequency: int) -> Tokenizer:
    trainer = trainers.WordLevelTrainer(
        special_tokens=list(SPECIAL_TOKENS), min_frequency=min_frequency, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != i:
            raise AssertionError(f"special token {token} got id {tokenizer.token_to_id(token)}")
    return tokenizer


def word_tokenizer(texts: Iterable[str], *, min_frequency: int = 1) -> Tokenizer:
    """A word-level tokenizer: NFKC, lowercase, split on whitespace and punctuation."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return _train(tokenizer, texts, min_frequency=min_frequency)


def char_tokenizer(texts: Iterable[str], *, min_frequency: int = 1) -> Tokenizer:
    """A character-level tokenizer (every character, spaces included, is a token)."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return _train(tokenizer, texts, min_frequency=min_frequency)


def is_character_level(tokenizer: Tokenizer) -> bool:
    """Whether every token but the special ones is a single character."""
    vocab = set(tokenizer.get_vocab()) - set(SPECIAL_TOKENS)
    return bool(vocab) and all(len(token) == 1 for token in vocab)
