"""Running classifier (many-to-one, streamed as many-to-many).

The recurrent stack reads left to right and a linear head turns every step's output into class
logits, so the logits at position t are the model's sentiment for the prefix `tokens[:t+1]`: the
service streams them token by token, and the label of the whole text is the last position's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.recurrent import RecurrentStack, State


@dataclass(frozen=True)
class ClassifierConfig:
    vocab_size: int
    num_classes: int = 2
    embed_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    cell: str = "gru"


class Classifier(nn.Module):
    """Embedding → recurrent stack → class logits after every token."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
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
