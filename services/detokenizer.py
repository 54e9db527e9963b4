"""Incremental detokenization: the text each generated token adds to the output."""

from __future__ import annotations

from services.model import LoadedModel


class Detokenizer:
    """Incremental detokenization: each token's text is what it adds to the decoded output.

    Decodes a window of the last few tokens, not the whole sequence (a completion's prefix is the
    whole typed text): a token's piece is `decode(window + token)` minus `decode(window)`, which
    keeps the spacing rules of every decoder (word-level joins, BPE's `▁`, characters). Recur's
    tokenizers are not byte-level, so no token ends inside a character. The window holds
    `WINDOW` to `2 * WINDOW` tokens and slides in jumps: while it stays put, a token's
    `decode(window)` is the previous token's `decode(window + token)`, so most tokens cost one
    decode.
    """

    WINDOW = 6  # tokens of context each decode sees

    def __init__(self, model: LoadedModel, prefix: list[int]) -> None:
        self.tokenizer = model.tokenizer
        self.ids = list(prefix)
        self.prefix_tokens = len(prefix)
        self.text = self.tokenizer.decode(self.ids) if prefix else ""
        self.start = len(self.text)
        self.read = len(self.ids)  # tokens whose text is in self.text
        self.context = max(0, self.read - self.WINDOW)  # where the decoded window starts
        self._decoded: tuple[int, int, str] | None = None  # (context, read, decode of that span)

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.context, self.read)
        after = self._decode(self.context, len(self.ids))
        if len(after) <= len(before):
            return ""  # a token that adds no text (yet): the window keeps it
        piece = after[len(before) :]
        self.text += piece
        self.read = len(self.ids)
        if self.read - self.context > 2 * self.WINDOW:  # slide by WINDOW at a time, so that
            self.context = self.read - self.WINDOW  # most tokens' `before` is the last `after`
        return piece

    def _decode(self, start: int, end: int) -> str:
        """`decode(ids[start:end])`; the last call's span again costs nothing (a token's
        `after` is the next token's `before` until the window slides)."""
        if self._decoded is not None and self._decoded[:2] == (start, end):
            return self._decoded[2]
        text: str = self.tokenizer.decode(self.ids[start:end])
        self._decoded = (start, end, text)
        return text

    @property
    def output(self) -> str:
        return self.text[self.start :]

    def ends_with(self, stop: tuple[str, ...], *, at_least: int = 0) -> bool:
        """Whether the output ends with one of the `stop` strings, once it holds at least
        `at_least` tokens (a request's `min_tokens`); no copy of it when there are none."""
        if not stop or len(self.ids) - self.prefix_tokens < at_least:
            return False
        return any(self.output.endswith(s) for s in stop)
