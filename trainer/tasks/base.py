"""What every task provides to the training loop and the exporter."""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tokenizers import Tokenizer
from torch import nn

from trainer.config import TrainConfig
from trainer.data import files
from trainer.data.files import ConcatLines, EncodedDataset, LineDataset
from trainer.data.tokenizer import PAD_ID, UNK_ID, build_tokenizer

Batch = dict[str, torch.Tensor]


@dataclass
class TaskData:
    """A task's encoded examples and the tokenizer that encoded them.

    From files, `train`/`valid` (and `train_raw`/`valid_raw`) are datasets that read and tokenize
    a line when it is indexed; from a built-in corpus they are lists. `valid[i]` is always the
    encoding of `valid_raw[i]`.
    """

    tokenizer: Tokenizer
    train: Sequence[Any]
    valid: Sequence[Any]
    description: str  # where the data came from, for the manifest
    labels: tuple[str, ...] = ()
    valid_raw: Sequence[Any] = field(default_factory=list)
    train_raw: Sequence[Any] = field(default_factory=list)
    data_report: list[dict[str, Any]] = field(default_factory=list)  # per file: lines skipped
    cfg: TrainConfig | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # what evaluation builds once
    test: Sequence[Any] | None = None  # `--test`, evaluated once with the best model
    test_raw: Sequence[Any] | None = None

    def test_view(self) -> TaskData | None:
        """This data with the test split in `valid`'s place (what `Task.evaluate` reads), or
        None without one; what evaluation learnt from the training split is kept."""
        if self.test is None or self.test_raw is None:
            return None
        kept = {k: v for k, v in self.cache.items() if not k.startswith("valid")}
        return dataclasses.replace(self, valid=self.test, valid_raw=self.test_raw, cache=kept)


@dataclass(frozen=True)
class ModelDefaults:
    embed_dim: int
    hidden_size: int
    epochs: int


class Task(ABC):
    """One of Recur's tasks: its data, model, loss and validation metrics."""

    name: str
    defaults: ModelDefaults
    monitor: str  # the validation metric that picks the best checkpoint and early-stops
    mode: Literal["max", "min"]  # which direction of `monitor` is better
    data_kind: str  # what its files hold: "pairs", "labelled" or "text" (trainer.data.formats)

    @abstractmethod
    def load_builtin(self, cfg: TrainConfig) -> tuple[list[Any], list[Any], str]:
        """Raw (train, valid, description) examples of the embedded corpus."""

    default_tokenizer: str  # "char" or "word": what `--tokenizer` means when it is not given

    @abstractmethod
    def texts(self, train: Iterable[Any]) -> Iterator[str]:
        """The texts of raw examples that a tokenizer learns from."""

    def build_tokenizer(self, train: Iterable[Any], cfg: TrainConfig | None = None) -> Tokenizer:
        """A tokenizer trained on the raw training examples (read once, as a stream)."""
        kind = (cfg.tokenizer if cfg is not None else "") or self.default_tokenizer
        vocab_size = cfg.vocab_size if cfg is not None else 0
        return build_tokenizer(kind, self.texts(train), vocab_size=vocab_size)

    @abstractmethod
    def encode_one(self, raw: Any, tokenizer: Tokenizer) -> Any:
        """The model's input for one raw example (never empty: an empty text is `[UNK]`)."""

    @abstractmethod
    def collate(self, examples: Sequence[Any]) -> Batch: ...

    def length(self, example: Any) -> int:
        """Tokens `example` takes in a padded batch (`--batch-type tokens` sorts and budgets by
        it): its token ids, or those of an (ids, label) pair."""
        return len(example[0] if isinstance(example, tuple) else example)

    @abstractmethod
    def build_model(self, cfg: TrainConfig, vocab_size: int) -> nn.Module: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch's targets, and the number of targets."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        """Validation metrics of `model` (unwrapped, in eval mode) on `data.valid`."""

    def labels(self) -> tuple[str, ...]:
        return ()

    def validate(self, cfg: TrainConfig) -> None:  # noqa: B027 (most tasks accept any setting)
        """Raise ValueError naming the flags of a setting this task's network cannot take."""

    def _log(self, line: str) -> None:
        print(f"[{self.name}] {line}", flush=True)

    def encode(self, raw: Iterable[Any], tokenizer: Tokenizer) -> list[Any]:
        return [self.encode_one(example, tokenizer) for example in raw]

    def read_files(
        self, cfg: TrainConfig, log: Callable[[str], None] | None = None
    ) -> files.Splits:
        """Scan `--train` (and `--valid`) for this task's kind of data."""
        return files.load_splits(self.data_kind, cfg.train, cfg.valid, cfg.test, seed=cfg.seed,
                                 carve_at=cfg.carve, num_classes=max(len(self.labels()), 2),
                                 log=log)  # fmt: skip

    def load_raw(self, cfg: TrainConfig) -> tuple[Sequence[Any], Sequence[Any], str]:
        """Raw (train, valid, description) examples, from the built-in corpus or files."""
        if cfg.data == "builtin":
            return self.load_builtin(cfg)
        splits = self.read_files(cfg)
        return splits.train, splits.valid, splits.description

    def prepare(self, cfg: TrainConfig, tokenizer_json: str | None = None) -> TaskData:
        """Load, tokenize and encode; reuse `tokenizer_json` so every worker encodes alike.

        Files are scanned, not loaded: the examples are read and encoded when indexed. The scan's
        findings are logged only where the tokenizer is built (not again by every worker).
        """
        log = self._log if tokenizer_json is None else None
        report: list[dict[str, Any]] = []
        train_raw: Sequence[Any]
        valid_raw: Sequence[Any]
        test_raw: Sequence[Any] | None = None
        if cfg.data == "builtin":
            train_raw, valid_raw, description = self.load_builtin(cfg)
        else:
            splits = self.read_files(cfg, log)
            train_raw, valid_raw, description = splits.train, splits.valid, splits.description
            test_raw = splits.test
            report = [r.to_dict() for r in splits.reports]
        train_raw = _head(train_raw, cfg.max_train_examples)
        valid_raw = _head(valid_raw, cfg.max_valid_examples)
        if tokenizer_json is None:
            tokenizer = self.build_tokenizer(train_raw, cfg)
        else:
            tokenizer = Tokenizer.from_str(tokenizer_json)
        encode = functools.partial(self.encode_one, tokenizer=tokenizer)
        lazy = not isinstance(train_raw, list)
        return TaskData(
            tokenizer=tokenizer,
            train=EncodedDataset(train_raw, encode) if lazy else self.encode(train_raw, tokenizer),
            valid=EncodedDataset(valid_raw, encode) if lazy else self.encode(valid_raw, tokenizer),
            description=description,
            labels=self.labels(),
            valid_raw=valid_raw,
            train_raw=train_raw,
            data_report=report,
            cfg=cfg,
            test=None if test_raw is None else EncodedDataset(test_raw, encode),
            test_raw=test_raw,
        )


def _head(examples: Sequence[Any], n: int) -> Sequence[Any]:
    """The first `n` examples (all when `n` is 0), without reading a file."""
    if not n:
        return examples
    return examples.head(n) if isinstance(examples, LineDataset | ConcatLines) else examples[:n]


def pad(sequences: Sequence[Sequence[int]], *, value: int = PAD_ID) -> torch.Tensor:
    """Right-pad integer sequences into a `(B, max_len)` int64 tensor."""
    width = max(len(s) for s in sequences)
    return torch.tensor([[*s, *[value] * (width - len(s))] for s in sequences], dtype=torch.long)


def ids_or_unk(ids: list[int]) -> list[int]:
    """`ids`, or `[UNK]` for a text the tokenizer turned into nothing (keeps indices aligned)."""
    return ids or [UNK_ID]


def on_device(batch: Batch, model: nn.Module) -> Batch:
    """`batch` on the device of `model`'s parameters (validation runs where training ran)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def unwrap(model: nn.Module) -> Any:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)
