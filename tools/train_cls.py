"""Train or evaluate a ResNet classifier (ImageNet, CIFAR-10 or an ImageFolder).

    python tools/train_cls.py --config configs/cifar10_r56.yaml [KEY VALUE ...]
    python tools/train_cls.py --config configs/cifar10_r56.yaml --resume
    python tools/train_cls.py --config configs/imagenet_r50.yaml --eval-only --weights W.pth
    torchrun --nproc_per_node=8 tools/train_cls.py --config configs/imagenet_r50.yaml

Overrides are ``KEY VALUE`` pairs of the config schema, e.g. ``SOLVER.BASE_LR 0.05
OUTPUT_DIR output/r56``. Everything lands in ``OUTPUT_DIR``: config.yaml, log.txt,
metrics.jsonl, TensorBoard events, model_XXXXXXX.pth, model_final.pth.
"""

from __future__ import annotations

import os
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.engine.classification import run
from resdet.engine.launch import tool_main
from resdet.utils.cli import tool_entry


@tool_entry
def main(argv: list[str] | None = None) -> int:
    return tool_main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
