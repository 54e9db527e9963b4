"""The ONNX step graphs of each task: thin wrappers that fix the graphs' signatures
(docs/design.md §3).

The recurrent state is explicit: one input per state tensor (`h`; `h` and `c` for an LSTM; `y`
for a Jordan network), returned as `<name>_out` by the step graphs and as `<name>_init` by the
translation encoder. Every graph has a dynamic batch axis (and time/source axes where it takes a
sequence), so the service can carry any number of streams from step to step in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.models import Classifier, LanguageModel, Seq2Seq
from trainer.models.recurrent import state_names
from trainer.models.seq2seq import source_mask

Inputs = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class GraphDef:
    """One graph to export: its wrapper module, names, symbolic shapes and example inputs."""

    role: str
    module: nn.Module
    inputs: dict[str, list[str]]  # name -> symbolic shape, in call order
    outputs: dict[str, list[str]]
    example: Callable[[int, int], Inputs]  # (batch, length) -> random inputs

    def __post_init__(self) -> None:
        # A new wrapper is in training mode, and torch.onnx.export restores the mode it found,
        # recursively: a trained model with dropout would come back from export dropping out.
        self.module.eval()

    def dtype(self, name: str) -> str:
        return (
            "int64"
            if name in ("tokens", "src", "src_len", "prev")
            else ("bool" if name == "src_mask" else "float32")
        )

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        specs = {**self.inputs, **self.outputs}
        return {
            name: {i: dim for i, dim in enumerate(shape) if not dim.isdigit()}
            for name, shape in specs.items()
        }


class _StepGraph(nn.Module):
    """`(tokens, *state) -> (logits, *state_out)` for the language model and the classifier."""

    def __init__(self, model: LanguageModel | Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> Inputs:
        logits, state_out = self.model(tokens, state)
        return (logits, *state_out)


class _EncoderGraph(nn.Module):
    """`(src, src_len) -> (memory, *state_init)`."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> Inputs:
        memory, state = self.encoder(src, src_len)
        return (memory, *state)


class _DecoderStepGraph(nn.Module):
    """`(prev, *state, memory, src_mask) -> (logits, *state_out, attention)`."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, prev: torch.Tensor, *rest: torch.Tensor) -> Inputs:
        *state, memory, src_mask = rest
        logits, state_out, attention = self.decoder(prev, tuple(state), memory, src_mask)
        return (logits[:, 0], *state_out, attention[:, 0])  # (B, V), (L, B, H)..., (B, S)


def _tokens(vocab: int, batch: int, length: int) -> torch.Tensor:
    return torch.randint(4, vocab, (batch, length))


def _state(cfg: Any, batch: int) -> Inputs:
    """A random state (every tensor `(L, B, H)`), so parity covers non-zero states."""
    names = state_names(cfg.cell)
    return tuple(torch.randn(cfg.num_layers, batch, cfg.hidden_size) for _ in names)


def _state_specs(cfg: Any, suffix: str) -> dict[str, list[str]]:
    shape = [str(cfg.num_layers), "batch", str(cfg.hidden_size)]
    return {name + suffix: shape for name in state_names(cfg.cell)}


def step_graph(role: str, model: LanguageModel | Classifier, out_dim: int) -> GraphDef:
    """`lm_step` or `classifier_step`."""
    cfg = model.cfg

    def example(batch: int, length: int) -> Inputs:
        return (_tokens(cfg.vocab_size, batch, length), *_state(cfg, batch))

    return GraphDef(
        role=role,
        module=_StepGraph(model),
        inputs={"tokens": ["batch", "time"], **_state_specs(cfg, "")},
        outputs={"logits": ["batch", "time", str(out_dim)], **_state_specs(cfg, "_out")},
        example=example,
    )


def seq2seq_graphs(model: Seq2Seq) -> list[GraphDef]:
    """`encoder` and `decoder_step`."""
    cfg = model.cfg
    width = str(2 * cfg.hidden_size)

    def encoder_example(batch: int, length: int) -> Inputs:
        src_len = torch.randint(1, length + 1, (batch,))
        src_len[0] = length
        return _tokens(cfg.vocab_size, batch, length), src_len

    def decoder_example(batch: int, length: int) -> Inputs:
        src, src_len = encoder_example(batch, length)
        memory = torch.randn(batch, length, 2 * cfg.hidden_size)
        prev = _tokens(cfg.vocab_size, batch, 1)
        return (prev, *_state(cfg, batch), memory, source_mask(src, src_len))

    encoder = GraphDef(
        role="encoder",
        module=_EncoderGraph(model),
        inputs={"src": ["batch", "source"], "src_len": ["batch"]},
        outputs={"memory": ["batch", "source", width], **_state_specs(cfg, "_init")},
        example=encoder_example,
    )
    decoder = GraphDef(
        role="decoder_step",
        module=_DecoderStepGraph(model),
        inputs={
            "prev": ["batch", "1"],
            **_state_specs(cfg, ""),
            "memory": ["batch", "source", width],
            "src_mask": ["batch", "source"],
        },
        outputs={
            "logits": ["batch", str(cfg.vocab_size)],
            **_state_specs(cfg, "_out"),
            "attention": ["batch", "source"],
        },
        example=decoder_example,
    )
    return [encoder, decoder]


def graphs_for(model: nn.Module) -> list[GraphDef]:
    """The graphs a bundle of `model` holds."""
    if isinstance(model, Seq2Seq):
        return seq2seq_graphs(model)
    if isinstance(model, LanguageModel):
        return [step_graph("lm_step", model, model.cfg.vocab_size)]
    if isinstance(model, Classifier):
        return [step_graph("classifier_step", model, model.cfg.num_classes)]
    raise TypeError(f"no ONNX graphs defined for {type(model).__name__}")
