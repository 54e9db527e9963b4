"""The training configuration: one frozen dataclass, resolved once in `main`.

Precedence: defaults < `--config` file (TOML or YAML) < `RECUR_*` environment variables <
command-line flags. The resolved configuration is logged at start and written into the run
directory and the bundle manifest.

A config file is one flat table of the fields below (`batch_size` or `batch-size`):

    task = "translation"        # run.toml
    train = "data/train.en,data/train.de"
    cell = "lstm"
    lr = 1e-3
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

TASKS = ("translation", "sentiment", "autocomplete")
CELLS = ("gru", "lstm", "elman", "elman_relu", "jordan")  # trainer.models.recurrent.CELLS
TOKENIZERS = ("char", "word", "whitespace", "bpe")  # trainer.data.tokenizer.TOKENIZERS
ATTENTIONS = ("dot", "general", "additive")  # trainer.models.seq2seq.ATTENTIONS
POOLINGS = ("last", "mean", "max")  # trainer.models.classifier.POOLINGS
PREFIX_LOSSES = ("none", "linear")  # trainer.tasks.sentiment.PREFIX_LOSSES
PRECISIONS = ("fp32", "bf16", "fp16")  # trainer.precision.PRECISIONS


@dataclass(frozen=True)
class TrainConfig:
    task: str = "sentiment"
    data: str = "builtin"  # "builtin" (the embedded corpus) or "files" (--train/--valid)
    train: str = ""  # training file(s); translation accepts "a.en,a.de"
    valid: str = ""  # validation file(s), or a share ("10%") or count ("2000") of --train; "": 5%
    test: str = ""  # test file(s), or a share/count of --train; evaluated once, with the best model
    carve: str = "random"  # where shares of --train are carved from: random lines, or its end
    cell: str = "gru"
    attention: str = "general"  # translation: dot, general or additive
    input_feeding: bool = False  # translation: the previous attentional vector feeds the decoder
    pooling: str = "last"  # sentiment: last, mean or max over the per-token logits
    prefix_loss: str = ""  # sentiment: none (final label only) or linear (every prefix); "": linear
    tie_embeddings: bool = False  # autocomplete: output layer shares the embedding (E == H)
    tokenizer: str = ""  # char, word or bpe; empty: the task's (char for autocomplete, else word)
    vocab_size: int = 0  # 0: 8000 for bpe, 30000 for char and word
    embed_dim: int = 0  # 0: the task's default
    hidden_size: int = 0  # 0: the task's default
    num_layers: int = 1
    dropout: float = 0.0
    epochs: int = 0  # 0: the task's default
    batch_size: int = 64  # per worker, as in Ray Train
    batch_type: str = "examples"  # examples, or tokens: --batch-size padded tokens per batch
    bptt: int = 0  # autocomplete: truncated BPTT over the text as one stream; 0: per sequence
    optimizer: str = "adam"  # adam, adamw, sgd, rmsprop
    lr: float = 3e-3
    momentum: float = 0.9  # sgd and rmsprop
    weight_decay: float = 0.0
    schedule: str = "none"  # none, cosine, plateau
    plateau_factor: float = 0.5  # plateau: the rate is multiplied by this when validation stalls
    warmup_steps: int = 0
    clip_norm: float = 1.0  # 0: no clipping by norm
    clip_value: float = 0.0  # 0: no clipping by value
    weight_norm: bool = False  # weight normalization of input and recurrent weights
    eval_completions: int = 200  # autocomplete: validation queries completed for MRR@10; 0: off
    popular_max_queries: int = 1_000_000  # autocomplete: popular-query index size; 0: no index
    beam_size: int = 0  # translation: > 1 also reports BLEU of beam search of this width
    fit_decoding_pairs: int = 500  # translation: validation pairs beam defaults are fit on; 0: off
    patience: int = 0  # early stopping: validations without improvement; 0: off
    seed: int = 0
    workers: int = 2  # data-parallel Ray Train workers; 0 trains in-process without Ray
    use_gpu: bool = False
    precision: str = "fp32"  # fp32, or bf16 / fp16 autocast (mixed precision; fp16: CUDA)
    max_train_examples: int = 0  # 0: all
    max_valid_examples: int = 0  # 0: all
    out: str = "models"  # model repository the bundle is exported to
    name: str = ""  # model name; empty: the task name
    run_dir: str = "runs"  # Ray Train storage path (checkpoints, results)
    run_name: str = ""  # empty: "<name>-<timestamp>"; an existing run of that name resumes
    checkpoint_every_steps: int = 0  # also checkpoint every N optimizer steps; 0: per epoch only
    keep_checkpoints: int = 0  # Ray Train: checkpoints kept (best and latest first); 0: all
    max_failures: int = 1  # Ray Train: restarts of a failed worker group from its checkpoint
    log_every: int = 50  # progress line every N optimizer steps
    diagnose_every: int = 100  # gradient-flow diagnostics every N optimizer steps; 0: off
    dry_run: bool = False  # one batch of training and a tiny export, for smoke tests

    @property
    def model_name(self) -> str:
        return self.name or self.task

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def validate(self) -> None:
        """Raise ValueError naming the flag of the first invalid setting."""
        checks = [
            *self._choices(),
            (self.data != "files" or bool(self.train), "--data files needs --train"),
            (self.data == "files" or not self.test, "--test applies to --data files"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (
                0.0 < self.plateau_factor < 1.0,
                f"--plateau-factor must be in (0, 1), got {self.plateau_factor}",
            ),
            (self.num_layers >= 1, f"--num-layers must be >= 1, got {self.num_layers}"),
            (0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}"),
            *(
                (
                    getattr(self, name) >= 0,
                    f"--{_flag(name)} must be >= 0, got {getattr(self, name)}",
                )
                for name in _NON_NEGATIVE
            ),
            (
                self.bptt == 0 or self.task == "autocomplete",
                "--bptt applies to language models (--task autocomplete)",
            ),
            (
                self.precision != "fp16" or self.use_gpu,
                "--precision fp16 needs --use-gpu (loss-scaled fp16 autocast is CUDA's)",
            ),
            (
                self.bptt == 0 or self.batch_type == "examples",
                "--batch-type tokens does not apply to --bptt (its batches are rows of a stream)",
            ),
            *self._task_only(),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def _choices(self) -> list[tuple[bool, str]]:
        checks = []
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            listed = ", ".join(c for c in choices if c)
            checks.append(
                (value in choices, f"--{_flag(name)} must be one of {listed}, got {value!r}")
            )
        return checks

    def _task_only(self) -> list[tuple[bool, str]]:
        """Flags of one task's network, refused for the others rather than ignored."""
        only = [
            ("attention", self.attention != "general", "translation"),
            ("input-feeding", self.input_feeding, "translation"),
            ("pooling", self.pooling != "last", "sentiment"),
            ("prefix-loss", self.prefix_loss != "", "sentiment"),
            ("tie-embeddings", self.tie_embeddings, "autocomplete"),
        ]
        return [
            (not used or self.task == task, f"--{flag} applies to --task {task}")
            for flag, used, task in only
        ]


_CHOICES = {
    "task": TASKS,
    "data": ("builtin", "files"),
    "cell": CELLS,
    "optimizer": ("adam", "adamw", "sgd", "rmsprop"),
    "schedule": ("none", "cosine", "plateau"),
    "tokenizer": ("", *TOKENIZERS),
    "carve": ("random", "end"),
    "batch_type": ("examples", "tokens"),
    "precision": PRECISIONS,
    "attention": ATTENTIONS,
    "pooling": POOLINGS,
    "prefix_loss": ("", *PREFIX_LOSSES),
}
_NON_NEGATIVE = (
    "workers", "epochs", "clip_norm", "clip_value", "bptt", "diagnose_every", "patience",
    "max_train_examples", "max_valid_examples", "eval_completions", "popular_max_queries",
    "beam_size", "fit_decoding_pairs", "checkpoint_every_steps", "keep_checkpoints", "vocab_size",
)  # fmt: skip


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _parse(field_type: Any, raw: str, name: str) -> Any:
    kind = field_type if isinstance(field_type, str) else field_type.__name__
    try:
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return {"int": int, "float": float, "str": str}[kind](raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind}") from None


def _from_file(field_type: Any, value: Any, name: str) -> Any:
    """`value` of a config file's key, checked against the field's type."""
    kind = field_type if isinstance(field_type, str) else field_type.__name__
    if isinstance(value, str) and kind in ("int", "float"):
        return _parse(kind, value, name)  # YAML reads 3e-3 (no dot) as a string
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": numeric,
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        raise ValueError(f"{name} must be a {kind}, got {value!r}")
    return float(value) if kind == "float" else value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a `.toml`, `.yaml` or `.yml` file, keyed by field name.

    Raises:
        ValueError: a missing or unparsable file, an unknown key (named, with the closest field),
            or a value of the wrong type.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config: no such file: {p}")
    try:
        if p.suffix.lower() == ".toml":
            with p.open("rb") as f:
                data: Any = tomllib.load(f)
        elif p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        else:
            raise ValueError(f"--config: {p}: expected a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config: {p}: not valid TOML: {e}") from None
    except Exception as e:
        if type(e).__module__.startswith("yaml"):
            raise ValueError(f"--config: {p}: not valid YAML: {e}") from None
        raise
    if not isinstance(data, dict):
        raise ValueError(f"--config: {p}: expected a table of settings, got {type(data).__name__}")
    known = {f.name: f for f in fields(TrainConfig)}
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"--config: {p}: unknown key {key!r}{hint}")
        values[name] = _from_file(known[name].type, value, f"--config: {p}: {key}")
    return values


def resolve(
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    file_values: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < `file_values` (a config file's) < `RECUR_<FIELD>` environment < `overrides`
    (the flags that were given)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = dict(file_values or {})
    for f in fields(TrainConfig):
        env_name = f"RECUR_{f.name.upper()}"
        if env_name in environ:
            values[f.name] = _parse(f.type, environ[env_name], env_name)
        if overrides.get(f.name) is not None:
            values[f.name] = overrides[f.name]
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
