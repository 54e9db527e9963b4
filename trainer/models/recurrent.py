"""The recurrent stack every head is built on, with its state as an explicit tuple of tensors.

| cell         | update (per layer, per step)                                         | state  |
|--------------|----------------------------------------------------------------------|--------|
| `elman`      | h_t = tanh(W_ih x_t + W_hh h_{t-1} + b)                              | (h,)   |
| `elman_relu` | h_t = relu(W_ih x_t + W_hh h_{t-1} + b)                              | (h,)   |
| `jordan`     | h_t = tanh(W_x x_t + W_y y_{t-1} + b_h); y_t = tanh(W_o h_t + b_o)   | (y,)   |
| `lstm`       | gates i, f, g, o; c_t = f c_{t-1} + i g; h_t = o tanh(c_t)           | (h, c) |
| `gru`        | gates r, z; n = tanh(W_in x + r (W_hn h + b_hn)); h_t = (1-z) n + z h | (h,)   |

The state is a tuple so that every cell fits one interface; its names (`state_names`) become the
ONNX graphs' state inputs (`h`, `c`, `y`) and outputs (`h_out`, ...). Each tensor is
`(num_layers, B, H)`. Elman, LSTM and GRU are PyTorch's fused modules (cuDNN on GPU); the Jordan
network, whose recurrence runs through the layer's previous *output*, is a scripted loop, which
the ONNX exporter turns into a `Loop` with a dynamic time axis.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

_STATES = {
    "gru": ("h",),
    "lstm": ("h", "c"),
    "elman": ("h",),
    "elman_relu": ("h",),
    "jordan": ("y",),
}
CELLS = tuple(_STATES)

State = tuple[torch.Tensor, ...]


def state_names(cell: str) -> tuple[str, ...]:
    """Names of the state tensors of `cell`, in the order of its state tuple."""
    if cell not in _STATES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")
    return _STATES[cell]


def detach_hidden(state: State) -> State:
    """Cut the autograd history of a state (between truncated-BPTT chunks)."""
    return tuple(s.detach() for s in state)


@torch.jit.script
def _jordan_scan(
    xs: torch.Tensor, y: torch.Tensor, w_y: torch.Tensor, w_o: torch.Tensor, b_o: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Jordan layer over time: `xs` is `W_x x + b_h` for every step `(B, T, H)`."""
    outputs: list[torch.Tensor] = []
    for t in range(xs.size(1)):
        h = torch.tanh(xs[:, t] + F.linear(y, w_y))
        y = torch.tanh(F.linear(h, w_o, b_o))
        outputs.append(y)
    return torch.stack(outputs, 1), y


class JordanLayer(nn.Module):
    """A Jordan layer: the previous output `y_{t-1}` (the context units) feeds the update."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input = nn.Linear(input_size, hidden_size)  # W_x, b_h
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)  # W_y
        self.output = nn.Linear(hidden_size, hidden_size)  # W_o, b_o

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x: (B, T, I)`, `y: (B, H)` → outputs `(B, T, H)` and the last output `(B, H)`."""
        scanned: tuple[torch.Tensor, torch.Tensor] = _jordan_scan(  # scripted: typed Any
            self.input(x), y, self.recurrent.weight, self.output.weight, self.output.bias
        )
        return scanned


class Jordan(nn.Module):
    """Stacked Jordan layers with dropout between them."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(JordanLayer(size, hidden_size) for size in sizes)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last = []
        for i, layer in enumerate(self.layers):
            x, y_last = layer(self.drop(x) if i else x, y[i])
            last.append(y_last)
        return x, torch.stack(last)


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
        self.names = state_names(cell)
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        between = dropout if num_layers > 1 else 0.0
        self.rnn: nn.Module
        if cell == "jordan":
            self.rnn = Jordan(input_size, hidden_size, num_layers, between)
        elif cell == "lstm":
            self.rnn = nn.LSTM(
                input_size, hidden_size, num_layers, batch_first=True, dropout=between
            )
        elif cell == "gru":
            self.rnn = nn.GRU(
                input_size, hidden_size, num_layers, batch_first=True, dropout=between
            )
        else:
            nonlinearity = "relu" if cell == "elman_relu" else "tanh"
            self.rnn = nn.RNN(
                input_size,
                hidden_size,
                num_layers,
                nonlinearity=nonlinearity,
                batch_first=True,
                dropout=between,
            )

    def init_hidden(self, batch_size: int, device: torch.device | None = None) -> State:
        """The zero state for `batch_size` sequences: each tensor `(num_layers, B, H)`."""
        shape = (self.num_layers, batch_size, self.hidden_size)
        return tuple(torch.zeros(shape, device=device) for _ in self.names)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Run the stack over `x: (B, T, input_size)` from `state`.

        Returns:
            The top layer's outputs `(B, T, H)` and the state after the last step.
        """
        if self.cell == "lstm":
            out, (h, c) = self.rnn(x, (state[0], state[1]))
            return out, (h, c)
        out, h = self.rnn(x, state[0])
        return out, (h,)


def apply_weight_norm(stack: RecurrentStack) -> None:
    """Weight-normalize the input and recurrent weights of `stack` (w = g · v / ‖v‖)."""
    if stack.cell == "jordan":
        for layer in stack.rnn.layers:  # type: ignore[union-attr]
            weight_norm(layer.input, "weight")
            weight_norm(layer.recurrent, "weight")
        return
    for name in [n for n, _ in stack.rnn.named_parameters() if n.startswith("weight_")]:
        weight_norm(stack.rnn, name)


def remove_weight_norm(model: nn.Module) -> None:
    """Fold every parametrization back into a plain weight (before export or checkpointing)."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(cast(nn.ModuleDict, module.parametrizations)):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
