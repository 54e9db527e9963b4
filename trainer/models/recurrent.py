"""The recurrent stack every head is built on, with its state as an explicit tuple of tensors.

The state is a tuple so that cells with more than one state tensor (an LSTM's `(h, c)`, a Jordan
network's previous output) fit the same interface; the tuple's names (`state_names`) become the
ONNX graphs' state inputs (`h`) and outputs (`h_out`). Today the stack is a GRU; further cells
plug in behind `RecurrentStack` without touching the heads.
"""

from __future__ import annotations

import torch
from torch import nn

CELLS = ("gru",)

State = tuple[torch.Tensor, ...]


def state_names(cell: str) -> tuple[str, ...]:
    """Names of the state tensors of `cell`, in the order of its state tuple."""
    if cell == "gru":
        return ("h",)
    raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")


def detach_hidden(state: State) -> State:
    """Cut the autograd history of a state (between truncated-BPTT chunks)."""
    return tuple(s.detach() for s in state)


class RecurrentStack(nn.Module):
    """A stack of `num_layers` recurrent layers over batch-first sequences.

    Args:
        cell: the cell type, one of `CELLS`.
        input_size: width of the input at each step.
        hidden_size: width of each layer's hidden state.
        num_layers: stacked layers.
        dropout: dropout between layers (not after the last).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        state_names(cell)  # validates the cell name
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.rnn = nn.GRU(
            input_size,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )

    def init_hidden(self, batch_size: int, device: torch.device | None = None) -> State:
        """The zero state for `batch_size` sequences: `h: (num_layers, B, H)`."""
        h = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device)
        return (h,)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Run the stack over `x: (B, T, input_size)` from `state`.

        Returns:
            The top layer's outputs `(B, T, H)` and the state after the last step.
        """
        out, h = self.rnn(x, state[0])
        return out, (h,)
