"""Truncated backpropagation through time for language models.

The training text becomes one token stream (every example `[BOS] … [EOS]`, concatenated). With
`B` sequences per rank and `W` ranks, the stream is cut into `B·W` contiguous rows of equal
length (the tail that does not fill a row is dropped), and rank r trains on rows `r·B … r·B+B-1`:
each rank reads its own deterministic token streams, and every rank takes the same number of
optimizer steps, because all rows have the same length.

Each optimizer step reads the next `bptt` tokens of every row (k1 = k2 = `bptt`: the forward
pass advances `bptt` steps and the gradient flows back through those same `bptt` steps). The
state is carried from chunk to chunk and detached at every chunk boundary, so memory and time per
step do not grow with the length of the text.

State reset rules: the state is zero at the start of every epoch (each epoch re-reads the rows
from their beginning) and is never reset inside an epoch, not even at `[EOS]`: the model sees
`[EOS] [BOS]` at every boundary between examples and learns to start afresh there. `[BOS]` is
read but never scored (it always follows `[EOS]`), so the loss counts the tokens a corpus such as
PTB counts: every word and one end-of-line per line, as pytorch/examples word_language_model.

Validation and test read their text the same way (`stream_loss`): one stream cut into 10 rows,
`bptt` tokens at a time, the state carried from chunk to chunk.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from trainer.data.tokenizer import BOS_ID, PAD_ID
from trainer.models.recurrent import State, detach_hidden

if TYPE_CHECKING:  # the models do not import this module; a type is all it needs
    from trainer.models.language_model import LanguageModel

EVAL_ROWS = 10  # rows a validation stream is cut into (word_language_model's eval batch size)


def token_stream(examples: Iterable[Sequence[int]]) -> torch.Tensor:
    """Every example's ids, concatenated, as one int64 tensor (8 bytes a token, not a list)."""
    stream = array("q")
    for example in examples:
        stream.extend(example)
    return (
        torch.frombuffer(stream, dtype=torch.long) if stream else torch.zeros(0, dtype=torch.long)
    )


def scored(targets: torch.Tensor) -> torch.Tensor:
    """`targets` with `[BOS]` (which always follows `[EOS]`) turned into padding: not scored."""
    return targets.masked_fill(targets == BOS_ID, PAD_ID)


def rank_rows(
    stream: Sequence[int] | torch.Tensor, *, batch_size: int, rank: int, world_size: int
) -> torch.Tensor:
    """This rank's `(batch_size, L)` rows of the token stream."""
    rows = batch_size * world_size
    length = len(stream) // rows
    if length < 2:
        raise ValueError(
            f"the training stream has {len(stream)} tokens, too few for {rows} rows "
            f"(--batch-size {batch_size} x {world_size} workers)"
        )
    data = torch.as_tensor(stream[: rows * length], dtype=torch.long).view(rows, length)
    return data[rank * batch_size : (rank + 1) * batch_size]


def chunks(rows: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`(inputs, targets)` pairs of `(B, ≤ bptt)` tokens, targets shifted by one."""
    for start in range(0, rows.size(1) - 1, bptt):
        width = min(bptt, rows.size(1) - 1 - start)
        yield rows[:, start : start + width], rows[:, start + 1 : start + 1 + width]


def num_chunks(rows: torch.Tensor, bptt: int) -> int:
    return -(-(rows.size(1) - 1) // bptt)


class TruncatedBPTT:
    """Carries a language model's state across chunks, detaching it at every boundary."""

    def __init__(self) -> None:
        self.state: State | None = None

    def reset(self) -> None:
        """Forget the state (the start of an epoch)."""
        self.state = None

    def loss(
        self, model: nn.Module, inner: LanguageModel, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Mean next-token loss of one chunk, from the state the previous chunk left.

        Args:
            model: the model to call (DDP-wrapped under Ray).
            inner: the unwrapped model, for `init_hidden`.
            inputs: `(B, T)` tokens.
            targets: `(B, T)` next tokens.
        """
        if self.state is None:
            self.state = inner.init_hidden(inputs.size(0), inputs.device)
        state = detach_hidden(self.state)  # the gradient stops at the chunk boundary
        logits, self.state = model(inputs, state)  # (B, T, V)
        targets = scored(targets)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)
        return loss, int((targets != PAD_ID).sum())


@torch.no_grad()
def stream_loss(
    model: LanguageModel, stream: torch.Tensor, *, bptt: int, rows: int = EVAL_ROWS
) -> tuple[float, int, int]:
    """Summed nats, scored targets and correct argmax predictions of `model` reading `stream`
    as `rows` rows, `bptt` tokens at a time, the state carried (the tail that does not fill a
    row is dropped, as in training)."""
    rows = max(1, min(rows, len(stream) // 2))
    data = rank_rows(stream, batch_size=rows, rank=0, world_size=1)
    device = next(model.parameters()).device
    state = model.init_hidden(rows, device)
    total, count, correct = 0.0, 0, 0
    for inputs, targets in chunks(data, bptt):
        logits, state = model(inputs.to(device), state)
        nats, n, right = tally(logits, scored(targets.to(device)))
        total, count, correct = total + nats, count + n, correct + right
    return total, count, correct


def tally(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int, int]:
    """Summed next-token nats, targets that are not padding, and correct argmax predictions of
    `logits: (B, T, V)` against `targets: (B, T)`."""
    nats = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID, reduction="sum"
    ).item()
    mask = targets != PAD_ID
    return nats, int(mask.sum()), int(((logits.argmax(2) == targets) & mask).sum())
