"""Sequence to sequence with attention (many-to-many): a bidirectional encoder and a decoder
that attends over the encoder's memory at every step (Luong's "general" score).

The decoder has no input feeding, so its whole state is the recurrent state: that is what lets
the service carry a translation from step to step with `decoder_step(prev, h, memory, src_mask)`,
and what lets training run the decoder over the whole target in one call (teacher forcing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.recurrent import RecurrentStack, State


@dataclass(frozen=True)
class Seq2SeqConfig:
    vocab_size: int  # joint source/target vocabulary
    embed_dim: int = 128
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0
    cell: str = "gru"


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of `x: (B, S, D)` within its length, leaving the padding in place.

    Reversing twice is the identity, so the same call maps the backward direction's outputs back.
    """
    steps = torch.arange(x.size(1), device=x.device).unsqueeze(0)  # (1, S)
    last = (lengths - 1).unsqueeze(1)  # (B, 1)
    index = torch.where(steps <= last, last - steps, steps)  # (B, S)
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.size(2)))


class Encoder(nn.Module):
    """Reads the source in both directions; returns the memory and the decoder's initial state.

    The backward direction runs a forward stack over each sequence reversed within its length
    (instead of packed sequences), so padded batches and the ONNX graph behave the same.
    """

    def __init__(self, cfg: Seq2SeqConfig, embed: nn.Embedding) -> None:
        super().__init__()
        self.embed = embed
        self.drop = nn.Dropout(cfg.dropout)
        self.forward_rnn, self.backward_rnn = (
            RecurrentStack(
                cfg.cell,
                cfg.embed_dim,
                cfg.hidden_size,
                num_layers=cfg.num_layers,
                dropout=cfg.dropout,
            )
            for _ in range(2)
        )
        # One projection per state tensor (h; h and c for an LSTM) from both final directions.
        self.bridges = nn.ModuleList(
            nn.Linear(2 * cfg.hidden_size, cfg.num_layers * cfg.hidden_size)
            for _ in self.forward_rnn.names
        )
        self.num_layers = cfg.num_layers
        self.hidden_size = cfg.hidden_size

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, State]:
        """`src: (B, S)`, `src_len: (B,)` → memory `(B, S, 2H)` and the decoder's first state."""
        batch = src.size(0)
        x = self.drop(self.embed(src))  # (B, S, E)
        zeros = self.forward_rnn.init_hidden(batch, src.device)
        fwd, _ = self.forward_rnn(x, zeros)  # (B, S, H)
        bwd_rev, _ = self.backward_rnn(reverse_padded(x, src_len), zeros)
        bwd = reverse_padded(bwd_rev, src_len)  # (B, S, H)
        memory = torch.cat([fwd, bwd], dim=2)  # (B, S, 2H)
        last = (src_len - 1).view(batch, 1, 1).expand(-1, 1, fwd.size(2))
        fwd_last = fwd.gather(1, last).squeeze(1)  # (B, H): forward state after the last token
        summary = torch.cat([fwd_last, bwd[:, 0]], dim=1)  # (B, 2H)
        state = tuple(
            torch.tanh(bridge(summary))  # (B, L*H)
            .view(batch, self.num_layers, self.hidden_size)
            .transpose(0, 1)
            .contiguous()  # (L, B, H)
            for bridge in self.bridges
        )
        return memory, state


class Decoder(nn.Module):
    """Recurrent decoder with attention over the encoder memory."""

    def __init__(self, cfg: Seq2SeqConfig, embed: nn.Embedding) -> None:
        super().__init__()
        self.embed = embed
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = RecurrentStack(
            cfg.cell,
            cfg.embed_dim,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
        )
        self.attn = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)  # "general"
        self.combine = nn.Linear(3 * cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(
        self,
        prev: torch.Tensor,
        state: State,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Decode `prev: (B, T)` (the previous target tokens) from `state`.

        Args:
            prev: target input tokens `(B, T)`; `T = 1` for one step.
            state: the decoder state.
            memory: encoder outputs `(B, S, 2H)`.
            src_mask: `(B, S)`, True on real source tokens.

        Returns:
            logits `(B, T, V)`, the state after the last step, attention `(B, T, S)`.
        """
        out, state = self.rnn(self.drop(self.embed(prev)), state)  # (B, T, H)
        keys = self.attn(memory)  # (B, S, H)
        scores = torch.bmm(out, keys.transpose(1, 2))  # (B, T, S)
        scores = scores.masked_fill(~src_mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=2)  # (B, T, S)
        context = torch.bmm(weights, memory)  # (B, T, 2H)
        combined = torch.tanh(self.combine(torch.cat([out, context], dim=2)))  # (B, T, H)
        return self.out(self.drop(combined)), state, weights


class Seq2Seq(nn.Module):
    """Encoder-decoder with a shared (joint-vocabulary) embedding."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.encoder = Encoder(cfg, self.embed)
        self.decoder = Decoder(cfg, self.embed)

    def forward(
        self,
        src: torch.Tensor,
        src_len: torch.Tensor,
        prev: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher-forced logits `(B, T, V)` for target inputs `prev: (B, T)`."""
        memory, state = self.encoder(src, src_len)
        logits, _, _ = self.decoder(prev, state, memory, source_mask(src, src_len))
        return logits


def source_mask(src: torch.Tensor, src_len: torch.Tensor) -> torch.Tensor:
    """`(B, S)` bool mask, True where `src` holds a real token."""
    steps = torch.arange(src.size(1), device=src.device).unsqueeze(0)
    return steps < src_len.unsqueeze(1)


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq,
    src: torch.Tensor,
    src_len: torch.Tensor,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int,
) -> list[list[int]]:
    """Greedy translation of a padded batch; each output stops before its first `eos_id`."""
    memory, state = model.encoder(src, src_len)
    mask = source_mask(src, src_len)
    prev = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
    outputs: list[list[int]] = [[] for _ in range(src.size(0))]
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        logits, state, _ = model.decoder(prev, state, memory, mask)
        prev = logits[:, -1].argmax(1, keepdim=True)  # (B, 1)
        for i, token in enumerate(prev.squeeze(1).tolist()):
            if not done[i] and token != eos_id:
                outputs[i].append(token)
        done |= prev.squeeze(1) == eos_id
        if bool(done.all()):
            break
    return outputs
