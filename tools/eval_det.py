"""Evaluate a detector checkpoint on the config's test datasets (COCO AP and/or VOC AP).

    python tools/eval_det.py --config configs/coco_r101.yaml --weights W.pth
    python tools/eval_det.py --config configs/shapes_r18_fpn.yaml --weights W.pth \
        TEST.EVALUATORS "[coco, voc]"

Results are printed and written to OUTPUT_DIR (eval_results.json, coco_metrics.json,
coco_per_class.md, coco_results.json, voc_metrics.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.config import ConfigError, load_config
from resdet.data.records import DatasetError
from resdet.engine.detection import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="YAML config (with _BASE_ chain)")
    parser.add_argument("--weights", required=True, help="checkpoint to evaluate")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.opts)
        results = run(cfg, eval_only=True, weights=args.weights)
    except (ConfigError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
