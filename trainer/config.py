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
TOKENIZERS = ("char", "word", "bpe")  # trainer.data.tokenizer.TOKENIZERS


@dataclass(frozen=True)
class TrainConfig:
    task: str = "sentiment"
    data: str = "builtin"  # "builtin" (the embedded corpus) or "files" (--train/--valid)
    train: str = ""  # training file(s); translation accepts "a.en,a.de"
    valid: str = ""  # validation file(s); empty holds out 5% of --train
    cell: str = "gru"
    tokenizer: str = ""  # char, word or bpe; empty: the task's (char for autocomplete, else word)
    vocab_size: int = 0  # 0: 8000 for bpe, 30000 for char and word
    embed_dim: int = 0  # 0: the task's default
    hidden_size: int = 0  # 0: the task's default
    num_layers: int = 1
    dropout: float = 0.0
    epochs: int = 0  # 0: the task's default
    batch_size: int = 64  # per worker, as in Ray Train
    bptt: int = 0  # autocomplete: truncated BPTT over the text as one stream; 0: per sequence
    optimizer: str = "adam"  # adam, adamw, sgd, rmsprop
    lr: float = 3e-3
    momentum: float = 0.9  # sgd and rmsprop
    weight_decay: float = 0.0
    schedule: str = "none"  # none, cosine, plateau
    warmup_steps: int = 0
    clip_norm: float = 1.0  # 0: no clipping by norm
    clip_value: float = 0.0  # 0: no clipping by value
    weight_norm: bool = False  # weight normalization of input and recurrent weights
    eval_completions: int = 200  # autocomplete: validation queries completed for MRR@10; 0: off
    beam_size: int = 0  # translation: > 1 also reports BLEU of beam search of this width
    patience: int = 0  # early stopping: validations without improvement; 0: off
    seed: int = 0
    workers: int = 2  # data-parallel Ray Train workers; 0 trains in-process without Ray
    use_gpu: bool = False
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
            (self.task in TASKS, f"--task must be one of {', '.join(TASKS)}, got {self.task!r}"),
            (self.data in ("builtin", "files"), f"--data must be builtin or files: {self.data!r}"),
            (self.data != "files" or bool(self.train), "--data files needs --train"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.num_layers >= 1, f"--num-layers must be >= 1, got {self.num_layers}"),
            (0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}"),
            (
                self.optimizer in ("adam", "adamw", "sgd", "rmsprop"),
                f"--optimizer must be one of adam, adamw, sgd, rmsprop, got {self.optimizer!r}",
            ),
            (
                self.schedule in ("none", "cosine", "plateau"),
                f"--schedule must be one of none, cosine, plateau, got {self.schedule!r}",
            ),
            (self.clip_norm >= 0, f"--clip-norm must be >= 0, got {self.clip_norm}"),
            (self.clip_value >= 0, f"--clip-value must be >= 0, got {self.clip_value}"),
            (self.bptt >= 0, f"--bptt must be >= 0, got {self.bptt}"),
            (
                self.bptt == 0 or self.task == "autocomplete",
                "--bptt applies to language models (--task autocomplete)",
            ),
            (self.diagnose_every >= 0, f"--diagnose-every must be >= 0: {self.diagnose_every}"),
            (self.max_train_examples >= 0, "--max-train-examples must be >= 0"),
            (self.max_valid_examples >= 0, "--max-valid-examples must be >= 0"),
            (self.eval_completions >= 0, "--eval-completions must be >= 0"),
            (self.beam_size >= 0, f"--beam-size must be >= 0, got {self.beam_size}"),
            (self.checkpoint_every_steps >= 0, "--checkpoint-every-steps must be >= 0"),
            (self.keep_checkpoints >= 0, "--keep-checkpoints must be >= 0"),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}"),
            (
                self.tokenizer in ("", *TOKENIZERS),
                f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}",
            ),
            (self.vocab_size >= 0, f"--vocab-size must be >= 0, got {self.vocab_size}"),
            (self.cell in CELLS, f"--cell must be one of {', '.join(CELLS)}, got {self.cell!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


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
