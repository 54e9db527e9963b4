"""Sequence to sequence with attention (many-to-many): a bidirectional encoder and a decoder
that attends over the encoder's memory at every step (Luong et al. 2015).

| `--attention` | score(q, k) of decoder output q `(H)` and memory k `(2H)`                      |
|---------------|----------------------------------------------------------------------------------|
| `dot`         | q · (k_fwd + k_bwd): no parameters; the memory's two directions are summed to H  |
| `general`     | q · W k (the default)                                                            |
| `additive`    | v · tanh(W q + U k) (Bahdanau's score, on the current output as Luong places it) |

The attentional vector h~_t = tanh(W_c [q_t; context_t]) gives the logits. With
`--input-feeding`, h~_{t-1} is also concatenated to the embedding of the next input token.

The decoder's state stays the recurrent state alone, with or without input feeding: h~_{t-1} is a
function of the previous top-layer output (the top layer's state) and the memory, so a step
recomputes it from what `decoder_step(prev, h, memory, src_mask)` already receives (for the first
step, from the encoder's initial state rather than Luong's zeros). That keeps the ONNX graphs'
signature. Without input feeding, training runs the decoder over the whole target in one call;
with it, one step at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.recurrent import RecurrentStack, State

ATTENTIONS = ("dot", "general", "additive")


@dataclass(frozen=True)
class Seq2SeqConfig:
    vocab_size: int  # joint source/target vocabulary
    embed_dim: int = 128
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0
    cell: str = "gru"
    attention: str = "general"  # one of ATTENTIONS
    input_feeding: bool = False


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
    """Recurrent decoder with attention over the encoder memory (and optional input feeding)."""

    def __init__(self, cfg: Seq2SeqConfig, embed: nn.Embedding) -> None:
        super().__init__()
        if cfg.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}: {cfg.attention!r}")
        self.embed = embed
        self.drop = nn.Dropout(cfg.dropout)
        self.kind, self.input_feeding, self.hidden_size = (
            cfg.attention, cfg.input_feeding, cfg.hidden_size,
        )  # fmt: skip
        feed = cfg.hidden_size if cfg.input_feeding else 0
        self.rnn = RecurrentStack(
            cfg.cell,
            cfg.embed_dim + feed,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
        )
        if cfg.attention == "general":
            self.attn = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        elif cfg.attention == "additive":
            self.attn_query = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
            self.attn_key = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size)
            self.attn_v = nn.Linear(cfg.hidden_size, 1, bias=False)
        self.combine = nn.Linear(3 * cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def _scores(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """`query: (B, T, H)`, `memory: (B, S, 2H)` → scores `(B, T, S)`."""
        if self.kind == "dot":
            keys = memory[..., : self.hidden_size] + memory[..., self.hidden_size :]  # (B, S, H)
            return torch.bmm(query, keys.transpose(1, 2))
        if self.kind == "general":
            return torch.bmm(query, self.attn(memory).transpose(1, 2))
        q = self.attn_query(query).unsqueeze(2)  # (B, T, 1, H)
        k = self.attn_key(memory).unsqueeze(1)  # (B, 1, S, H)
        scores: torch.Tensor = self.attn_v(torch.tanh(q + k))  # (B, T, S, 1)
        return scores.squeeze(3)  # (B, T, S)

    def attend(
        self, query: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attentional vectors h~ `(B, T, H)` of decoder outputs `query: (B, T, H)`, and the
        attention weights `(B, T, S)`."""
        scores = self._scores(query, memory).masked_fill(~src_mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=2)  # (B, T, S)
        context = torch.bmm(weights, memory)  # (B, T, 2H)
        return torch.tanh(self.combine(torch.cat([query, context], dim=2))), weights

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
        combined, state, weights = self.attentional(prev, state, memory, src_mask)
        return self.out(self.drop(combined)), state, weights

    def attentional(
        self,
        prev: torch.Tensor,
        state: State,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """`forward` up to the output layer: the attentional vectors h~ `(B, T, H)` instead of
        the logits."""
        if not self.input_feeding:
            out, state = self.rnn(self.drop(self.embed(prev)), state)  # (B, T, H)
            combined, weights = self.attend(out, memory, src_mask)
            return combined, state, weights
        # h~_{t-1} from the previous top-layer output: the top layer's state, (B, 1, H)
        feed, _ = self.attend(state[0][-1].unsqueeze(1), memory, src_mask)
        steps, attention = [], []
        for t in range(prev.size(1)):
            x = torch.cat([self.drop(self.embed(prev[:, t : t + 1])), feed], dim=2)
            out, state = self.rnn(x, state)  # (B, 1, H)
            feed, weights = self.attend(out, memory, src_mask)  # h~_t feeds step t + 1
            steps.append(feed)
            attention.append(weights)
        return torch.cat(steps, dim=1), state, torch.cat(attention, dim=1)  # (B, T, H)


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
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits `(B, T, V)` for target inputs `prev: (B, T)`; with `keep`
        (`(B, T)` bool, True where a target is scored), only those positions' logits `(N, V)`:
        the output layer, the widest matrix product of a step, then skips the padding."""
        memory, state = self.encoder(src, src_len)
        combined, _, _ = self.decoder.attentional(prev, state, memory, source_mask(src, src_len))
        if keep is not None:
            combined = combined[keep]  # (N, H)
        logits: torch.Tensor = self.decoder.out(self.decoder.drop(combined))
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
