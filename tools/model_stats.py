"""Print parameters and multiply-adds per stage of the model a config describes.

    python tools/model_stats.py --config configs/imagenet_r50.yaml
    python tools/model_stats.py --config configs/coco_r101.yaml --size 600 1000 --rois 300
    python tools/model_stats.py --config configs/cifar10_r56.yaml MODEL.BACKBONE.DEPTH 110

One MAC is one multiply-add (= 2 FLOPs); only convolutions, linear layers and matrix products
are counted. Classifiers are counted at ``INPUT.CROP_SIZE`` square, detectors at
``INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST`` (800x1333 by default) with
``MODEL.RPN.POST_NMS_TOPK_TEST`` RoIs, unless ``--size`` / ``--rois`` say otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.config import load_config
from resdet.modeling.stats import model_stats
from resdet.utils.cli import tool_entry, tool_parser


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", required=True, help="YAML config (with _BASE_ chain)")
    parser.add_argument(
        "--size", nargs=2, type=int, metavar=("H", "W"), help="input height and width"
    )
    parser.add_argument("--rois", type=int, help="RoIs per image for a detector's RoI head")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON instead")
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.size is not None and min(args.size) <= 0:
        parser.error(f"--size needs two positive integers, got {args.size}")
    if args.rois is not None and args.rois < 0:
        parser.error(f"--rois must be >= 0, got {args.rois}")
    try:
        cfg = load_config(args.config, args.opts)
        stats = model_stats(cfg, args.size, args.rois)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(stats), indent=2) if args.json else stats.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
