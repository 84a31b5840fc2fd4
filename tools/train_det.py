"""Train or evaluate a Faster R-CNN detector (COCO, VOC, YOLO or registered datasets).

    python tools/train_det.py --config configs/coco_r101.yaml [KEY VALUE ...]
    python tools/train_det.py --config configs/coco_r101.yaml --resume
    python tools/train_det.py --config configs/coco_r101.yaml --eval-only --weights W.pth
    torchrun --nproc_per_node=8 tools/train_det.py --config configs/coco_r50_fpn.yaml

Overrides are ``KEY VALUE`` pairs of the config schema, e.g. ``SOLVER.BASE_LR 0.05
OUTPUT_DIR output/coco_r101``. Everything lands in ``OUTPUT_DIR``: config.yaml, log.txt,
metrics.jsonl, TensorBoard events, model_XXXXXXX.pth, model_final.pth and the
evaluators' results (coco_metrics.json, coco_per_class.md, voc_metrics.json).
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
    return tool_main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
