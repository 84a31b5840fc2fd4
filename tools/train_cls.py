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
from resdet.engine.classification import run
from resdet.engine.dist import destroy_distributed, is_main_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="YAML config (with _BASE_ chain)")
    parser.add_argument("--resume", action="store_true", help="continue from last_checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="evaluate and exit")
    parser.add_argument("--weights", default="", help="checkpoint to evaluate / start from")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.opts)
        results = run(cfg, resume=args.resume, eval_only=args.eval_only, weights=args.weights)
    except (ConfigError, DatasetError, FileNotFoundError, FloatingPointError) as e:
        # FloatingPointError: a NaN/inf loss; the message names the iteration and the terms.
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        main_process = is_main_process()
        destroy_distributed()
    if results and main_process:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
