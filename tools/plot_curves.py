"""Plot training and validation error curves of one or more runs (the paper's Fig. 4 / 6 style).

    python tools/plot_curves.py output/cifar_plain20 output/cifar_r20 output/cifar_r56 \
        --labels plain-20 ResNet-20 ResNet-56 --output curves.png

Reads each RUN_DIR/metrics.jsonl: thin dashed lines are training error, bold lines validation
error, one colour per run. Runs that logged no error are plotted by training loss instead.
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
from resdet.utils.plots import plot_curves


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories with metrics.jsonl")
    parser.add_argument("--output", default="curves.png", help="image file to write")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args(argv)
    try:
        path = plot_curves(args.runs, args.output, labels=args.labels, title=args.title)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
