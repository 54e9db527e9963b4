"""The streaming detokenizer decodes a window of tokens, yet its pieces always add up to the
decoding of the whole sequence, for every tokenizer Recur builds."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from services.detokenizer import Detokenizer
from trainer.data.tokenizer import build_tokenizer

TEXTS = [
    "A man in an orange hat starring at something.",
    "Ein Boston Terrier läuft über saftig-grünes Gras.",
    "what's the weather like in são paulo?",
    "Two young, White males are outside near many bushes.",
] * 5


@pytest.mark.parametrize("kind", ["char", "word", "whitespace", "bpe"])
def test_pieces_add_up_to_the_whole_decoding(kind: str) -> None:
    tokenizer = build_tokenizer(kind, TEXTS, vocab_size=300 if kind == "bpe" else 0)
    model: Any = SimpleNamespace(tokenizer=tokenizer)
    vocab = tokenizer.get_vocab_size()
    rng = random.Random(kind)
    for trial in range(40):
        prefix = [2, *tokenizer.encode(rng.choice(TEXTS)).ids[: rng.randrange(0, 30)]]
        generated = [rng.randrange(vocab) for _ in range(rng.randrange(1, 25))]  # specials too
        detok = Detokenizer(model, prefix)
        pieces = [detok.add(token) for token in generated]
        whole = tokenizer.decode(prefix + generated)
        assert "".join(pieces) == whole[len(tokenizer.decode(prefix)) :], (kind, trial)
        assert detok.output == "".join(pieces)


def test_a_long_prefix_is_not_decoded_again_for_every_token() -> None:
    tokenizer = build_tokenizer("char", TEXTS)
    calls: list[int] = []

    class Counting:
        def decode(self, ids: list[int]) -> str:
            calls.append(len(ids))
            return str(tokenizer.decode(ids))

    detok = Detokenizer(SimpleNamespace(tokenizer=Counting()), [2, *[5] * 500])  # type: ignore[arg-type]
    for _ in range(20):
        detok.add(6)
    assert max(calls[1:]) <= 2 * Detokenizer.WINDOW + 1  # the prefix was decoded once, first
    assert len(calls[1:]) <= 20 * 1.5  # mostly one decode per token: the last one is reused
