"""`recur-eval`: a bundle's task metrics as JSON, computed by the serving engine in-process.

    recur-eval --bundle models/sentiment/1 --data dev.tsv [--limit N] [--graphs int8]
    recur-eval --bundle models/translation/2 --data builtin
    recur-eval --bundle models/tatoeba/1 --data held-out --beam-size 5 --length-penalty 0.6

The bundle is verified and loaded as `recur-serve` loads it, and every example is a request to
the same engine (`services.offline`; no gRPC), many at a time, so the figures are those of what
the service streams. A long evaluation prints a progress line to stderr every 10 s.

`--data builtin` is the task's embedded validation split (with the seed the bundle was trained
with); `--data held-out` is the split its run carved out of `--train` (`--test 2000`, else
`--valid 10%`), found again from the configuration in its manifest; a path is read like
`recur-train --train` reads it (a comma joins two aligned translation files, or lists files).
Metrics are listed in `trainer/evaluate.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from services.errors import BundleError
from services.model import LoadedModel
from services.offline import GRAPHS, open_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recur-eval", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bundle", required=True, type=Path, help="a bundle version directory, models/<name>/<v>"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="'builtin' (the task's validation split), 'held-out' (the split the bundle's run "
        "carved out of --train) or a data file",
    )
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N examples only")
    parser.add_argument(
        "--beam-size",
        type=int,
        default=0,
        help="translation: also report BLEU of beam search of this width (0/1: greedy only)",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=0.0,
        help="translation, with --beam-size: GNMT's length penalty alpha of that beam search "
        "(0: rank by total log-probability)",
    )
    parser.add_argument(
        "--graphs",
        choices=GRAPHS,
        default="fp32",
        help="which copy of the graphs to run (default: fp32, the exported graphs, on which the "
        "export measured the manifest's metrics; recur-serve runs `optimized` by default)",
    )
    return parser


def _config(model: LoadedModel) -> dict[str, Any]:
    config_json = model.bundle.manifest.training.config_json
    config: dict[str, Any] = json.loads(config_json) if config_json else {}
    return config


def _examples(parser: argparse.ArgumentParser, model: LoadedModel, data: str) -> list[Any]:
    from trainer.data.files import DataError
    from trainer.evaluate import load_examples

    classes = len(model.labels)
    try:
        config = _config(model)
        examples = load_examples(model.task, data, seed=int(config.get("seed", 0)),
                                 num_classes=classes, config=config)  # fmt: skip
    except DataError as e:
        parser.error(f"--data: {e}")
    if not examples:
        parser.error(f"--data: {data} holds no {model.task} examples")
    return examples


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    if args.beam_size < 0:
        parser.error(f"--beam-size must be >= 0, got {args.beam_size}")
    if not args.bundle.is_dir():
        parser.error(f"--bundle: no bundle at {args.bundle} (expected models/<name>/<version>)")
    if not 0.0 <= args.length_penalty <= 2.0:
        parser.error(f"--length-penalty must be in [0, 2], got {args.length_penalty:g}")
    try:
        model = open_model(args.bundle, graphs=args.graphs)
    except BundleError as e:
        flag = f"--graphs {args.graphs}" if f"no {args.graphs} copy" in str(e) else "--bundle"
        parser.error(f"{flag}: {e}")
    if args.beam_size > 1 and model.task != "translation":
        parser.error(f"--beam-size applies to translation bundles; this one is {model.task}")
    examples = _examples(parser, model, args.data)
    if args.limit:
        examples = examples[: args.limit]
    from trainer.evaluate import evaluate
    from trainer.progress import Ticker

    metrics = evaluate(
        model,
        examples,
        beam_size=args.beam_size,
        length_penalty=args.length_penalty,
        progress=Ticker("recur-eval"),
    )
    result = {
        "bundle": str(args.bundle),
        "name": model.name,
        "version": model.version,
        "task": model.task,
        "cell": model.bundle.manifest.cell,
        "graphs": args.graphs,
        "data": args.data,
        "metrics": metrics,
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
