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
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import settings
from settings import setting


@dataclass(frozen=True)
class TrainConfig:
    # fmt: off
    task: str = setting("sentiment", "what to train", choices="trainer.tasks:TASKS")
    data: str = setting("builtin", "builtin: the task's embedded corpus; files: --train/--valid",
                        choices=("builtin", "files"))
    train: str = setting("", "training data: files or glob patterns, comma-separated; "
                         "translation also takes two aligned files 'a.en,a.de'")
    valid: str = setting("", "validation data: files, or a share ('10%') or count ('2000') of "
                         "--train's lines to carve out ('': hold out 5% of --train)")
    test: str = setting("", "test data: files, or a share or count of --train; evaluated once, "
                        "with the best epoch's model")
    carve: str = setting("random", "where shares of --train are carved from: seeded random "
                         "lines, or its end", choices=("random", "end"))
    cell: str = setting("gru", "recurrent cell", choices="trainer.models.recurrent:CELLS")
    attention: str = setting("general", "translation: attention score (additive: Bahdanau)",
                             choices="trainer.models.seq2seq:ATTENTIONS")
    input_feeding: bool = setting(False, "translation: feed the previous attentional vector to "
                                  "the decoder (Luong input feeding)")
    pooling: str = setting("last", "sentiment: the label pools the per-token logits by their "
                           "last, mean or max; the service streams the same running pool",
                           choices="trainer.models.classifier:POOLINGS")
    prefix_loss: str = setting("", "sentiment: none scores the whole text's label only; linear "
                               "also scores every prefix's running label, weighted by its length "
                               "(trainer/tasks/sentiment.py); '': linear",
                               choices="trainer.tasks.sentiment:PREFIX_LOSSES", blank=True)
    tie_embeddings: bool = setting(False, "autocomplete: share the embedding with the output "
                                   "layer (needs --embed-dim = --hidden-size)")
    tokenizer: str = setting("", "tokenizer trained on the training split ('': the task's: char "
                             "for autocomplete, else word)",
                             choices="trainer.data.tokenizer:TOKENIZERS", blank=True)
    vocab_size: int = setting(0, "vocabulary size (0: 8000 for bpe, 30000 for char and word)",
                              min=0)
    embed_dim: int = setting(0, "embedding width (0: the task's default)", min=0)
    hidden_size: int = setting(0, "recurrent width (0: the task's default)", min=0)
    num_layers: int = setting(1, "stacked recurrent layers", min=1)
    dropout: float = setting(0.0, "dropout between layers", min=0, below=1)
    epochs: int = setting(0, "passes over the training data (0: the task's default)", min=0)
    batch_size: int = setting(64, "examples per batch and worker (as in Ray Train), or padded "
                              "tokens with --batch-type tokens", min=1)
    batch_type: str = setting("examples", "examples: random batches of --batch-size examples; "
                              "tokens: examples of similar length up to --batch-size padded "
                              "tokens", choices=("examples", "tokens"))
    bptt: int = setting(0, "autocomplete: truncated BPTT over the text as one stream, chunks of "
                        "this many tokens (0: per sequence)", min=0)
    optimizer: str = setting("adam", "optimizer (--momentum, --weight-decay)",
                             choices="trainer.optim:OPTIMIZERS")
    lr: float = setting(3e-3, "learning rate", above=0)
    momentum: float = setting(0.9, "sgd and rmsprop: momentum", min=0)
    weight_decay: float = setting(0.0, "weight decay", min=0)
    schedule: str = setting("none", "learning-rate schedule (plateau: times --plateau-factor "
                            "when validation stalls)", choices="trainer.optim:SCHEDULES")
    plateau_factor: float = setting(0.5, "plateau: the rate is multiplied by this when "
                                    "validation stalls", above=0, below=1)
    warmup_steps: int = setting(0, "optimizer steps of linear warm-up", min=0)
    clip_norm: float = setting(1.0, "clip gradients by global norm (0: no clipping by norm)",
                               min=0)
    clip_value: float = setting(0.0, "clip gradients by value (0: no clipping by value)", min=0)
    weight_norm: bool = setting(False, "weight normalization of the input and recurrent weights")
    eval_completions: int = setting(200, "autocomplete: validation queries completed for MRR@10 "
                                    "(0: off); also those the ranking weights are fit on", min=0)
    popular_max_queries: int = setting(1_000_000, "autocomplete: the bundle's popular-query "
                                       "index keeps the N most frequent training queries (0: no "
                                       "index, model-only suggestions)", min=0)
    beam_size: int = setting(0, "translation: also report validation BLEU of beam search with "
                             "this width (0/1: greedy only)", min=0)
    fit_decoding_pairs: int = setting(500, "translation: validation pairs the served beam width "
                                      "and length penalty are fit on, recorded in the bundle "
                                      "(0: not fit)", min=0)
    patience: int = setting(0, "early stopping: validations without improvement of the task's "
                            "metric (0: off); the best epoch is exported", min=0)
    seed: int = setting(0, "random seed of the model, the batches and carved splits")
    workers: int = setting(2, "Ray Train data-parallel workers; 0 trains in-process without "
                           "Ray", min=0)
    use_gpu: bool = setting(False, "one GPU per worker (NCCL); in-process: CUDA")
    precision: str = setting("fp32", "fp32, or mixed precision: bf16 or fp16 autocast (fp16 with "
                             "loss scaling, CUDA only)", choices="trainer.precision:PRECISIONS")
    max_train_examples: int = setting(0, "use only the first N training examples (0: all)",
                                      min=0)
    max_valid_examples: int = setting(0, "use only the first N validation examples (0: all)",
                                      min=0)
    out: str = setting("models", "model repository to export the bundle to", metavar="DIR")
    name: str = setting("", "model name in the repository ('': the task)")
    run_dir: str = setting("runs", "where runs keep checkpoints (Ray Train storage): a directory "
                           "every node mounts, or a URI (s3://bucket/runs with AWS_ENDPOINT_URL "
                           "for a non-AWS endpoint, gs://, file://)", metavar="DIR")
    run_name: str = setting("", "the run's directory name ('': `<name>-<timestamp>`); an existing "
                            "run of that name resumes")
    checkpoint_every_steps: int = setting(0, "also checkpoint every N optimizer steps (0: once "
                                          "per epoch)", min=0)
    keep_checkpoints: int = setting(0, "Ray Train: checkpoints to keep, best and latest first "
                                    "(0: all)", min=0)
    max_failures: int = setting(1, "Ray Train: restarts of a failed worker group from its "
                                "checkpoint (-1: no limit)", min=-1)
    log_every: int = setting(50, "a progress line every N optimizer steps", min=1)
    diagnose_every: int = setting(100, "gradient-flow diagnostics every N optimizer steps "
                                  "(0: off)", min=0)
    dry_run: bool = setting(False, "one batch of training and an export to a temporary "
                            "directory, for smoke tests")
    # fmt: on

    @property
    def model_name(self) -> str:
        return self.name or self.task

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def validate(self) -> None:
        """Raise ValueError naming the flag of the first invalid setting: out of its declared
        bounds or choices, or not fitting the others."""
        settings.check(self)
        checks = [
            (self.data != "files" or bool(self.train), "--data files needs --train"),
            (self.data == "files" or not self.test, "--test applies to --data files"),
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


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a `.toml`, `.yaml` or `.yml` file, keyed by field name.

    Raises:
        ValueError: a missing or unparsable file, an unknown key (named, with the closest field),
            or a value of the wrong type.
    """
    return settings.read_file(TrainConfig, path)


def resolve(
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    file_values: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < `file_values` (a config file's) < `RECUR_<FIELD>` environment < `overrides`
    (the flags that were given), validated."""
    cfg = settings.resolve(TrainConfig, overrides, os.environ if environ is None else environ,
                           file_values)  # fmt: skip
    cfg.validate()
    return cfg
