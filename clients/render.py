"""Human-readable output of the `recur` command: each stream is printed as its events arrive.

Every function here writes to stdout and flushes after each piece, so a token shows the moment the
server sends it. ANSI styling is on only when stdout is a terminal (see `Style`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from protos.recur.v1 import inference_pb2

BAR_WIDTH = 20
TOKEN_WIDTH = 14
LABEL_WIDTH = 10


@dataclass(frozen=True)
class Style:
    """ANSI styling of the output; `color=False` leaves the text untouched."""

    color: bool

    def paint(self, text: str, sgr: str) -> str:
        """Wraps `text` in the ANSI select-graphic-rendition code `sgr` (e.g. "2" for dim)."""
        return f"\x1b[{sgr}m{text}\x1b[0m" if self.color and text else text

    def dim(self, text: str) -> str:
        """Dims `text`."""
        return self.paint(text, "2")


def _emit(text: str) -> None:
    print(text, end="", flush=True)


def finish_reason(value: inference_pb2.FinishReason.ValueType) -> str:
    """Names a `FinishReason` the short way: "stop", "length", "superseded" (or its number)."""
    try:
        name = inference_pb2.FinishReason.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix("FINISH_REASON_").lower()


def summary(stream: inference_pb2.StreamSummary) -> str:
    """The summary line: `[model v1 · 9 tokens · ttft 3.1 ms · total 12.0 ms · stop]`."""
    timings = stream.timings
    return (
        f"[{stream.model} v{stream.version} · {stream.output_tokens} tokens"
        f" · ttft {timings.time_to_first_token_seconds * 1e3:.1f} ms"
        f" · total {timings.total_seconds * 1e3:.1f} ms · {finish_reason(stream.finish_reason)}]"
    )


async def translation(
    events: AsyncIterator[inference_pb2.TranslateResponse], *, style: Style
) -> None:
    """Prints the target text as it streams, then the summary and, when sent, the attention.

    The first piece loses its leading space; with attention, one line per target token names the
    source token it attended to most.
    """
    tokens: list[inference_pb2.GeneratedToken] = []
    async for event in events:
        if event.HasField("token"):
            _emit(event.token.text if tokens else event.token.text.lstrip(" "))
            tokens.append(event.token)
        elif event.HasField("final"):
            _emit("\n" + style.dim(summary(event.final.summary)) + "\n")
            _emit(_alignment(tokens, list(event.final.source_tokens)))


def _alignment(tokens: list[inference_pb2.GeneratedToken], source: list[str]) -> str:
    """One line per target token with attention: `  chat  ← cat (0.85)`; "" when none has any."""
    lines = []
    for token in tokens:
        weights = list(token.attention)
        if not weights:
            continue
        best = max(range(len(weights)), key=weights.__getitem__)
        attended = source[best] if best < len(source) else f"#{best}"
        lines.append(f"  {token.text.strip():<{TOKEN_WIDTH}} ← {attended} ({weights[best]:.2f})\n")
    return "attention:\n" + "".join(lines) if lines else ""


async def sentiment(
    events: AsyncIterator[inference_pb2.SentimentResponse], *, style: Style
) -> None:
    """Prints one line per input token (text, running label, bar, probability), then the label.

    The bar shows the probability of the last class, the positive one in the usual
    ["negative", "positive"] order; it is green at 0.5 and above, red below, on a terminal.
    """
    async for event in events:
        if event.HasField("token"):
            _emit(_sentiment_line(event.token, style) + "\n")
        elif event.HasField("final"):
            final = event.final
            labels, probabilities = list(final.labels), list(final.probabilities)
            if final.label in labels and len(probabilities) == len(labels):
                probability = probabilities[labels.index(final.label)]
            else:
                probability = max(probabilities, default=0.0)
            _emit(f"label: {final.label} (p={probability:.2f})\n")
            _emit(style.dim(summary(final.summary)) + "\n")


def _sentiment_line(token: inference_pb2.SentimentToken, style: Style) -> str:
    positive = token.probabilities[-1] if token.probabilities else 0.0
    filled = round(positive * BAR_WIDTH)
    bar = style.paint("█" * filled + "░" * (BAR_WIDTH - filled), "32" if positive >= 0.5 else "31")
    text = token.text.strip()
    return f"{text:<{TOKEN_WIDTH}} {token.label:<{LABEL_WIDTH}} {bar} {positive:.2f}"


async def completion(
    prefix: str, events: AsyncIterator[inference_pb2.CompleteResponse], *, style: Style
) -> None:
    """Prints the prefix (dim), the completion tokens as they stream, then the summary and the
    suggestions, best first, each with the ranking score that put it there and what went into
    it (the model's log-probability, the query's count in the index)."""
    _emit(style.dim(prefix))
    try:
        async for event in events:
            if event.HasField("token"):
                _emit(event.token.text)
            elif event.HasField("final"):
                _emit("\n" + style.dim(summary(event.final.summary)) + "\n")
                for rank, s in enumerate(event.final.suggestions, 1):
                    seen = f", {s.count}x in the query log" if s.count else ""
                    ranked = f"score {s.score:.2f}: " if s.score != s.logprob else ""  # index
                    why = f"  ({ranked}log p {s.logprob:.2f}{seen})"
                    _emit(f"  {rank}. {style.dim(prefix)}{s.text}" + style.dim(why) + "\n")
    except BaseException:
        _emit("\n")  # the error goes on a line of its own, not after the prefix
        raise


def session_answer(revision: int, text: str, final: inference_pb2.CompleteFinal) -> str:
    """One line per answered revision: `revision 2: hello wor⟨ld⟩`, plus ` (superseded)` if so."""
    superseded = final.summary.finish_reason == inference_pb2.FINISH_REASON_SUPERSEDED
    return f"revision {revision}: {text}⟨{final.completion}⟩" + (
        " (superseded)" if superseded else ""
    )


# The validation metrics that say how good a model of each task is, in the order shown, with
# their labels; the trainer records them as `valid_<key>` (and `test_<key>` for a --test split).
KEY_METRICS = {
    "translation": (("bleu", "BLEU"), ("bleu_beam", "beam BLEU")),
    "sentiment": (("accuracy", "accuracy"), ("macro_f1", "macro F1")),
    "autocomplete": (("bits_per_char", "bits/char"), ("mrr_at_10", "MRR@10")),
}


def key_metrics(model: inference_pb2.ModelInfo) -> str:
    """The few metrics that matter for the model's task, e.g. `BLEU 22.8 (test 21.9)`; the
    validation loss for a task without key metrics or a model that recorded none of them."""
    shown = []
    for key, label in KEY_METRICS.get(model.task, ()):
        if f"valid_{key}" in model.metrics:
            text = f"{label} {model.metrics[f'valid_{key}']:.4g}"
            if f"test_{key}" in model.metrics:
                text += f" (test {model.metrics[f'test_{key}']:.4g})"
            shown.append(text)
    if not shown and "valid_loss" in model.metrics:
        shown.append(f"loss {model.metrics['valid_loss']:.4g}")
    return " · ".join(shown)


def models_table(models: list[inference_pb2.ModelInfo]) -> str:
    """A table of the loaded models: name, version, task, cell, default, and the validation
    metrics that matter for the task (every metric, unreadable on one line, is in `--json`)."""
    rows = [["NAME", "VERSION", "TASK", "CELL", "DEFAULT", "VALIDATION"]]
    for model in models:
        default = "yes" if model.is_default else ""
        rows.append(
            [model.name, str(model.version), model.task, model.cell, default, key_metrics(model)]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"
