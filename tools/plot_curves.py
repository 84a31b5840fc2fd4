"""Plot the training and validation curves of one or more runs, one colour per run.

    python tools/plot_curves.py output/cifar_plain20 output/cifar_r20 output/cifar_r56 \
        --labels plain-20 ResNet-20 ResNet-56 --output curves.png
    python tools/plot_curves.py output/det_a output/det_b --output det.png \
        --metrics coco/AP50 voc/mAP07

Reads each RUN_DIR/metrics.jsonl. Classification runs (they log ``train_err``) are drawn in
the paper's Fig. 4 / 6 style: thin dashed lines training error, bold lines validation error.
Detection runs get one panel per loss term (training solid; validation loss dashed, with
TEST.VAL_LOSS), the learning rate, and the validation metrics (default: every AP, AP50 and
mAP07 logged; ``--metrics`` picks others) against iterations.
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.utils.cli import tool_entry
from resdet.utils.plots import plot_runs


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories with metrics.jsonl")
    parser.add_argument("--output", default="curves.png", help="image file to write")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument(
        "--metrics", nargs="+", default=None, help="val metrics to draw, e.g. coco/AP50"
    )
    args = parser.parse_args(argv)
    try:
        path = plot_runs(args.runs, args.output, args.labels, args.title, args.metrics)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
