"""`recur-train` (and `python -m trainer`): train one task, then export it as a model bundle.

recur-train --task sentiment --data builtin --workers 2 --epochs 1 --out models
recur-train --task translation --data files --train a.en,a.de --valid b.en,b.de --out models
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import settings
from trainer.checkpoint import (
    FILE,
    LAST,
    Checkpoint,
    CheckpointError,
    best_and_latest,
    resume,
    save,
    save_latest,
)
from trainer.config import TrainConfig, read_config_file, resolve
from trainer.data.files import DataError
from trainer.export import ExportError, export_checkpoint
from trainer.loop import print_report
from trainer.storage import is_uri, publish, staging_dir


def build_parser() -> argparse.ArgumentParser:
    """Flags for every TrainConfig field, from its `setting(...)` declaration; unset flags stay
    None so that the config file and the environment can apply."""
    parser = argparse.ArgumentParser(
        prog="recur-train",
        description="Train a recurrent network for one task and export it as a model bundle.",
        epilog="Every flag can also be set in a --config file (TOML or YAML, keys as the flags "
        "without dashes) or as RECUR_<FLAG> in the environment; flags win over the environment, "
        "the environment over the file.",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="a .toml or .yaml file of settings"
    )
    settings.add_arguments(parser, TrainConfig)
    return parser


def save_each_epoch(path: Path, metrics: dict[str, float], checkpoint: Checkpoint | None) -> None:
    """The in-process `report`: print, and keep the latest checkpoint for a resume (at every
    epoch and every `--checkpoint-every-steps` steps), and the best validation's as `best.pt`.

    Each file is written to a temporary file, fsynced, then renamed, so a crash mid-write leaves
    the previous checkpoint intact.
    """
    print_report(metrics, checkpoint)
    assert checkpoint is not None  # only ranks other than 0 report none
    save_latest(checkpoint, path)


def evaluate_test(task: Any, test: Any, checkpoint: Checkpoint) -> dict[str, float]:
    """`--test` metrics (`test_*`) of the best checkpoint's model, on the CPU, printed."""
    from trainer.export import rebuild_model

    model = rebuild_model(checkpoint).eval()
    print(f"[{task.name}] test: evaluating {len(test.valid):,} examples with the model of epoch "
          f"{checkpoint.position.epoch}", flush=True)  # fmt: skip
    started = time.perf_counter()
    metrics = {
        f"test_{k.removeprefix('valid_')}": v
        for k, v in task.evaluate(model, test).items()
        if k.startswith("valid_")
    }
    shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"[{task.name}] test ({len(test.valid):,} examples, best epoch "
          f"{checkpoint.position.epoch}, {time.perf_counter() - started:.0f} s): {shown}",
          flush=True)  # fmt: skip
    return metrics


def write_run_artifacts(
    checkpoint: Checkpoint, run_dir: Path, *, test: dict[str, float] | None = None
) -> None:
    """metrics.json (per-epoch metrics, gradient flow, test metrics of the best model) and their
    PNG plots in the run directory, from the last epoch's checkpoint (which holds the whole
    history)."""
    from trainer import plots

    history, flows = checkpoint.history, checkpoint.gradient_flow
    record: dict[str, Any] = {"history": history, "gradient_flow": flows,
                              "data": checkpoint.data.report}  # fmt: skip
    tested = {k: v for k, v in (test or {}).items() if k.startswith("test_")}
    if tested:
        record["test"] = tested
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
    title = f"{checkpoint.task} ({checkpoint.model_config.cell})"
    if history:
        plots.loss_curve(history, run_dir / "loss_curve.png", title=title)
    if flows:
        plots.gradient_flow(flows, run_dir / "gradient_flow.png", title=f"gradient flow: {title}")
    print(f"[{checkpoint.task}] run artifacts in {run_dir}", flush=True)


def run(cfg: TrainConfig) -> Path | None:
    """Train and export; returns the bundle directory (None for a dry run)."""
    import torch

    from trainer.loop import train_loop
    from trainer.tasks import get_task

    task = get_task(cfg.task)
    data = task.prepare(cfg)
    print(
        f"[{cfg.task}] data {data.description}: {len(data.train):,} train / "
        f"{len(data.valid):,} valid examples, vocabulary {data.tokenizer.get_vocab_size():,}",
        flush=True,
    )
    run_name = cfg.run_name or f"{cfg.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = staging_dir(cfg.run_dir, run_name)  # local; copied to a URI --run-dir at the end
    (run_dir / "config.json").write_text(cfg.to_json() + "\n")
    (run_dir / "tokenizer.json").write_text(data.tokenizer.to_str())
    if cfg.workers == 0 or cfg.dry_run:
        device = torch.device("cuda" if cfg.use_gpu else "cpu")
        report = partial(save_each_epoch, run_dir / LAST)
        train_loop(task, data, cfg, device=device, report=report, resume=resume(run_dir / LAST))
        checkpoint, latest = best_and_latest(run_dir)
    else:
        from trainer.ray_job import train_with_ray

        tokenizer = data.tokenizer.to_str()
        checkpoint, latest = train_with_ray(cfg, tokenizer_json=tokenizer, run_name=run_name)
    if (test := data.test_view()) is not None:
        checkpoint.metrics = {**checkpoint.metrics, **evaluate_test(task, test, checkpoint)}
    save(checkpoint, run_dir / FILE)  # the best checkpoint, for re-export
    write_run_artifacts(latest, run_dir, test=checkpoint.metrics)  # the whole run's history
    if (published := publish(run_dir, cfg.run_dir, run_name)) != str(run_dir):
        print(f"[{cfg.task}] run files copied to {published}", flush=True)
    if cfg.dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            bundle = export_checkpoint(checkpoint, out=Path(tmp), name=cfg.model_name)
            files = sorted(p.name for p in bundle.iterdir())
            print(f"[{cfg.task}] dry run: exported and verified {files}")
        return None
    bundle = export_checkpoint(checkpoint, out=Path(cfg.out), name=cfg.model_name,
                               fit_decoding=True)  # fmt: skip
    shown = " ".join(f"{k}={v:.4g}" for k, v in checkpoint.metrics.items())
    print(f"[{cfg.task}] exported {bundle} ({shown})", flush=True)
    return bundle


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    config_file = flags.pop("config")
    try:
        file_values = read_config_file(config_file) if config_file else {}
        cfg = resolve(flags, file_values=file_values)
        from trainer.tasks import get_task

        get_task(cfg.task).validate(cfg)
    except ValueError as e:
        parser.error(str(e))
    in_process = cfg.workers == 0 or cfg.dry_run
    if cfg.use_gpu and in_process and not _cuda_available():
        parser.error("--use-gpu: no CUDA device is available to this process")
    if cfg.workers == 0 and not cfg.dry_run and is_uri(cfg.run_dir):
        parser.error("--run-dir: a URI needs Ray workers (--workers 1 or more); in-process "
                     "runs keep their checkpoints in a local directory")  # fmt: skip
    print(f"recur-train configuration:\n{cfg.to_json()}", flush=True)
    try:
        run(cfg)
    except (DataError, ExportError, CheckpointError) as e:
        print(f"recur-train: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:  # a full disk, a read-only or vanished run directory
        where = f"{e.filename}: " if e.filename else ""
        print(f"recur-train: error: {where}{e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
