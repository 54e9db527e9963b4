"""`recur-export`: re-export a training run's checkpoint as a new bundle version.

    recur-export --checkpoint runs/translation-20261127-191330 --out models [--name translation]
    recur-export --checkpoint runs/sentiment-20261127-191330 --quantize int8 --max-quality-drop 0.01

The run directory holds `checkpoint.pt` (written by `recur-train`, the best validation's); a path
to a `.pt` file works too. The export runs the same ONNX Runtime parity check as training does
and writes nothing when it fails. `--quantize int8` adds int8 copies of the graphs, measured on
the run's validation split: the bundle is refused when the task's metric (sentiment accuracy,
translation BLEU, autocomplete nats/token) drops by more than `--max-quality-drop`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from trainer.checkpoint import FILE, CheckpointError, load
from trainer.export import TOLERANCE, ExportError, export_checkpoint
from trainer.storage import fetch_checkpoint, is_uri


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recur-export", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a run directory (with checkpoint.pt) or a checkpoint file, local or as a URI "
        "of the run's storage (s3://bucket/runs/<run>, gs://..., file://...)",
    )
    parser.add_argument("--out", default="models", type=Path, help="model repository")
    parser.add_argument("--name", default="", help="model name (default: the run's)")
    parser.add_argument(
        "--tolerance",
        default=TOLERANCE,
        type=float,
        help=f"largest ONNX Runtime vs PyTorch difference (default {TOLERANCE:g})",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default="",
        help="add int8 dynamically quantized copies of the graphs (needs --max-quality-drop)",
    )
    parser.add_argument(
        "--max-quality-drop",
        type=float,
        default=None,
        help="with --quantize: largest accepted drop of the validation metric, in its units "
        "(accuracy 0-1, BLEU 0-100, nats/token)",
    )
    return parser


def quantization_summary(bundle: Path) -> str:
    """One line on what the int8 graphs of `bundle` cost, from its manifest."""
    q = json.loads((bundle / "manifest.json").read_text())["quantization"]
    return (
        f"int8: {q['metric']} {q.get('fp32_value', 0.0):.4g} -> {q.get('int8_value', 0.0):.4g} "
        f"(drop {q.get('delta', 0.0):.4g} <= {q.get('max_quality_drop', 0.0):g}), "
        f"graph size x{q['size_ratio']:.2f}, {q['step_role']} step time "
        f"x{q['step_latency_ratio']:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recur-export-") as downloads:
        export(parser, args, downloads=Path(downloads))


def export(parser: argparse.ArgumentParser, args: argparse.Namespace, *, downloads: Path) -> None:
    """Check the flags, load the checkpoint (downloaded into `downloads` from a URI), export."""
    if args.quantize and args.max_quality_drop is None:
        parser.error("--quantize int8 needs --max-quality-drop (e.g. 0.01 for accuracy)")
    if args.max_quality_drop is not None and not args.quantize:
        parser.error("--max-quality-drop applies only with --quantize int8")
    path = Path(args.checkpoint)
    if is_uri(args.checkpoint):
        try:
            path = fetch_checkpoint(args.checkpoint, into=downloads)
        except (OSError, ValueError) as e:  # no such object, bucket or credentials
            parser.error(f"--checkpoint: {e}")
    elif path.is_dir():
        path = path / FILE
    if not path.is_file():
        parser.error(f"--checkpoint: no checkpoint at {path}")
    try:
        checkpoint = load(path)
    except CheckpointError as e:  # a truncated, foreign or older file: say so, no traceback
        parser.error(f"--checkpoint: {e}")
    name = args.name or checkpoint.config.name or checkpoint.task
    try:
        bundle = export_checkpoint(
            checkpoint,
            out=args.out,
            name=name,
            tolerance=args.tolerance,
            quantize=args.quantize,
            max_quality_drop=args.max_quality_drop or 0.0,
        )
    except ExportError as e:
        print(f"recur-export: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"recur-export: wrote {bundle}")
    if args.quantize:
        print(f"recur-export: {quantization_summary(bundle)}")


if __name__ == "__main__":
    main()
