"""Hugging Face `tokenizers` built from the training text: the same file ships in the bundle.

| `--tokenizer` | model                     | splits into                           | decodes to |
|---------------|---------------------------|---------------------------------------|------------|
| `char`        | WordLevel over characters | every character, spaces included      | the text   |
| `word`        | WordLevel, lowercased     | words and punctuation                 | words      |
| `whitespace`  | WordLevel, as written     | whitespace only (pre-tokenized text)  | words      |
| `bpe`         | BPE (`BpeTrainer`)        | subwords; `▁` marks each word's start | the text   |

Each is trained on the training split only, read once as a stream; `--vocab-size` caps the
vocabulary (0: 8000 for BPE, where the merges stop; 30000 for the word-level ones, the most frequent
tokens, as `WordLevelTrainer` has always capped them). Ids 0-3 are
the special tokens in every tokenizer Recur builds, so models and services agree on them without
looking them up: `[PAD]` 0, `[UNK]` 1, `[BOS]` 2, `[EOS]` 3.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
TOKENIZERS = ("char", "word", "whitespace", "bpe")
BPE_VOCAB_SIZE = 8000
WORD_VOCAB_SIZE = 30_000  # WordLevelTrainer's own default


def _train(tokenizer: Tokenizer, texts: Iterable[str], trainer: trainers.Trainer) -> Tokenizer:
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != i:
            raise AssertionError(f"special token {token} got id {tokenizer.token_to_id(token)}")
    return tokenizer


def _word_level(min_frequency: int, vocab_size: int) -> trainers.Trainer:
    return trainers.WordLevelTrainer(
        vocab_size=vocab_size or WORD_VOCAB_SIZE, min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS), show_progress=False,
    )  # fmt: skip


def word_tokenizer(
    texts: Iterable[str], *, min_frequency: int = 1, vocab_size: int = 0
) -> Tokenizer:
    """A word-level tokenizer: NFKC, lowercase, split on whitespace and punctuation."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return _train(tokenizer, texts, _word_level(min_frequency, vocab_size))


def whitespace_tokenizer(
    texts: Iterable[str], *, min_frequency: int = 1, vocab_size: int = 0
) -> Tokenizer:
    """A word-level tokenizer for pre-tokenized text (PTB): split on whitespace only, case and
    punctuation kept, so `<unk>` and `'s` stay the corpus's own tokens."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _train(tokenizer, texts, _word_level(min_frequency, vocab_size))


def char_tokenizer(
    texts: Iterable[str], *, min_frequency: int = 1, vocab_size: int = 0
) -> Tokenizer:
    """A character-level tokenizer (every character, spaces included, is a token)."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return _train(tokenizer, texts, _word_level(min_frequency, vocab_size))


def bpe_tokenizer(
    texts: Iterable[str], *, vocab_size: int = BPE_VOCAB_SIZE, min_frequency: int = 2
) -> Tokenizer:
    """Byte-pair encoding over NFKC text, SentencePiece style: whitespace becomes `▁`, which
    starts the next word's first subword, so decoding restores the spaces."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size or BPE_VOCAB_SIZE, min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS), limit_alphabet=1000, show_progress=False,
    )  # fmt: skip
    return _train(tokenizer, texts, trainer)


def build_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int = 0) -> Tokenizer:
    """The `--tokenizer` named `kind`, trained on `texts`."""
    if kind == "char":
        return char_tokenizer(texts, vocab_size=vocab_size)
    if kind == "word":
        return word_tokenizer(texts, vocab_size=vocab_size)
    if kind == "whitespace":
        return whitespace_tokenizer(texts, vocab_size=vocab_size)
    if kind == "bpe":
        return bpe_tokenizer(texts, vocab_size=vocab_size)
    raise ValueError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {kind!r}")


def is_character_level(tokenizer: Tokenizer) -> bool:
    """Whether every token but the special ones is a single character."""
    vocab = set(tokenizer.get_vocab()) - set(SPECIAL_TOKENS)
    return bool(vocab) and all(len(token) == 1 for token in vocab)
