"""Language model (one-to-many / one-to-one): next-token prediction over a recurrent stack.

With `tie_embeddings` the output projection shares the input embedding's matrix (Press & Wolf
2017; Inan et al. 2017): fewer parameters, usually a lower perplexity. The shared matrix is
`(V, E)` for both, so the top layer's width must equal the embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.recurrent import RecurrentStack, State

INIT_RANGE = 0.1


@dataclass(frozen=True)
class LanguageModelConfig:
    vocab_size: int
    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0
    cell: str = "gru"
    tie_embeddings: bool = False  # decoder.weight is embed.weight; needs embed_dim == hidden_size


class LanguageModel(nn.Module):
    """Embedding → recurrent stack → vocabulary logits, one prediction per input token."""

    def __init__(self, cfg: LanguageModelConfig) -> None:
        super().__init__()
        if cfg.tie_embeddings and cfg.embed_dim != cfg.hidden_size:
            raise ValueError(
                "--tie-embeddings needs --embed-dim equal to --hidden-size "
                f"(got {cfg.embed_dim} and {cfg.hidden_size})"
            )
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
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        # Zaremba et al. 2014 / word_language_model: small uniform embedding and output weights
        # (nn.Embedding's N(0, 1) rows are ~10x the recurrent layer's scale).
        nn.init.uniform_(self.embed.weight, -INIT_RANGE, INIT_RANGE)
        nn.init.uniform_(self.decoder.weight, -INIT_RANGE, INIT_RANGE)
        nn.init.zeros_(self.decoder.bias)
        if cfg.tie_embeddings:
            self.decoder.weight = self.embed.weight  # (V, E) = (V, H)

    def init_hidden(self, batch_size: int, device: torch.device | None = None) -> State:
        return self.rnn.init_hidden(batch_size, device)

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """`tokens: (B, T)` → logits `(B, T, V)` and the state after the last token."""
        x = self.drop(self.embed(tokens))  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        return self.decoder(self.drop(out)), state  # (B, T, V)
