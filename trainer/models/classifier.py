"""Running classifier (many-to-one, streamed as many-to-many).

The recurrent stack reads left to right and a linear head turns every step's output into class
logits: `forward` (and the `classifier_step` graph) return these per-token logits `(B, T, C)`.
The label of a text pools them over its positions (`--pooling`):

| pooling | label logits of `tokens[:t+1]`                   | a stream's running label needs  |
|---------|--------------------------------------------------|---------------------------------|
| `last`  | the logits at position t (the default)           | the latest logits: nothing more |
| `mean`  | the mean of the logits at 0..t                   | a running sum and count         |
| `max`   | the per-class maximum of the logits at 0..t      | a running per-class maximum     |

The head is affine, so mean-pooling the logits equals applying the head to the mean-pooled
states; max pools the class scores, not the states, so that a prefix's label stays a function of
the per-token logits the step graph streams. With `last`, the logits at t are the model's
sentiment for the prefix; with `mean` or `max`, each token's logits are its contribution, and
the running label is the pool of those seen so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.recurrent import RecurrentStack, State

POOLINGS = ("last", "mean", "max")


@dataclass(frozen=True)
class ClassifierConfig:
    vocab_size: int
    num_classes: int = 2
    embed_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    cell: str = "gru"
    pooling: str = "last"  # one of POOLINGS


class Classifier(nn.Module):
    """Embedding → recurrent stack → class logits after every token."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}: {cfg.pooling!r}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.rnn = RecurrentStack(
            cfg.cell,
            cfg.embed_dim,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, cfg.num_classes)

    def init_hidden(self, batch_size: int, device: torch.device | None = None) -> State:
        return self.rnn.init_hidden(batch_size, device)

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """`tokens: (B, T)` → running class logits `(B, T, C)` and the final state."""
        out, state = self.rnn(self.drop(self.embed(tokens)), state)  # (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, C)

    def running(self, logits: torch.Tensor) -> torch.Tensor:
        """The label logits of every prefix `(B, T, C)` from per-token `logits: (B, T, C)`: at
        position t, the pool of positions 0..t (what a stream shows after token t)."""
        if self.cfg.pooling == "last":
            return logits
        if self.cfg.pooling == "mean":
            counts = torch.arange(1, logits.size(1) + 1, device=logits.device, dtype=logits.dtype)
            return logits.cumsum(1) / counts[None, :, None]
        return logits.cummax(1).values

    def pool(self, logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The label logits `(B, C)` of each text from its per-token `logits: (B, T, C)`;
        positions at or past `lengths: (B,)` are padding."""
        if self.cfg.pooling == "last":
            last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, logits.size(2))
            return logits.gather(1, last).squeeze(1)
        steps = torch.arange(logits.size(1), device=logits.device)
        real = (steps[None, :] < lengths[:, None]).unsqueeze(2)  # (B, T, 1)
        if self.cfg.pooling == "mean":
            return (logits * real).sum(1) / lengths.unsqueeze(1).to(logits.dtype)
        return logits.masked_fill(~real, float("-inf")).amax(1)
