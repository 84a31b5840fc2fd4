"""Evaluate a detector checkpoint on the config's test datasets (COCO AP and/or VOC AP).

    python tools/eval_det.py --config configs/coco_r101.yaml --weights W.pth
    python tools/eval_det.py --config configs/shapes_r18_fpn.yaml --weights W.pth \
        TEST.EVALUATORS "[coco, voc]"

Results are printed and written to OUTPUT_DIR (eval_results.json, coco_metrics.json,
coco_per_class.md, coco_results.json, voc_metrics.json).
"""

from __future__ import annotations

import os
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.engine.detection import run
from resdet.engine.launch import tool_main
from resdet.utils.cli import tool_entry


@tool_entry
def main(argv: list[str] | None = None) -> int:
    return tool_main(__doc__, run, argv, eval_only=True)


if __name__ == "__main__":
    sys.exit(main())
