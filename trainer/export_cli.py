"""`recur-export`: re-export a training run's checkpoint as a new bundle version.

    recur-export --checkpoint runs/translation-20261127-191330 --out models [--name translation]

The run directory holds `checkpoint.pt` (written by `recur-train`, the best validation's); a path
to a `.pt` file works too. The export runs the same ONNX Runtime parity check as training does
and writes nothing when it fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.export import TOLERANCE, ExportError, export_checkpoint, load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recur-export", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="a run directory (with checkpoint.pt) or a checkpoint file",
    )
    parser.add_argument("--out", default="models", type=Path, help="model repository")
    parser.add_argument("--name", default="", help="model name (default: the run's)")
    parser.add_argument(
        "--tolerance",
        default=TOLERANCE,
        type=float,
        help=f"largest ONNX Runtime vs PyTorch difference (default {TOLERANCE:g})",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = args.checkpoint / "checkpoint.pt" if args.checkpoint.is_dir() else args.checkpoint
    if not path.is_file():
        parser.error(f"--checkpoint: no checkpoint at {path}")
    try:
        checkpoint = load_checkpoint(path)
    except Exception as e:  # a truncated or foreign file: say so, no traceback
        parser.error(f"--checkpoint: {path} is not a Recur checkpoint ({type(e).__name__}: {e})")
    if "model_config" not in checkpoint or "task" not in checkpoint:
        parser.error(f"--checkpoint: {path} is not a Recur checkpoint (no model_config/task)")
    name = args.name or checkpoint["config"].get("name") or checkpoint["task"]
    try:
        bundle = export_checkpoint(checkpoint, out=args.out, name=name, tolerance=args.tolerance)
    except ExportError as e:
        print(f"recur-export: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"recur-export: wrote {bundle}")


if __name__ == "__main__":
    main()
