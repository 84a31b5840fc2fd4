"""Convert ImageNet ResNet weights from torchvision, MSRA/Caffe2 or detectron2 to resdet.

    python tools/convert_weights.py resnet50-0676ba61.pth weights/r50_torchvision.pth
    python tools/convert_weights.py R-50.pkl weights/r50_msra.pth
    python tools/convert_weights.py R-50.pkl weights/r50_msra_rgb.pth --rgb

The output is a resdet checkpoint {"model", "config", "meta"}; its config records what the
weights need (depth, stride placement, norm, input channel order, pixel mean/std). The command
prints the config overrides a detector needs to start from these weights. ``.pkl`` files are
read with a restricted unpickler: a pickle naming anything but containers and numpy arrays is
refused without running it. Checkpoints written by tools/train_cls.py need no conversion.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.export.convert import convert_weights
from resdet.utils.cli import tool_entry


def _overrides(cfg, dst: str) -> str:
    m = cfg.MODEL
    pairs = [
        ("MODEL.BACKBONE.PRETRAINED", dst),
        ("MODEL.BACKBONE.STRIDE_IN_1X1", str(m.BACKBONE.STRIDE_IN_1X1)),
        ("MODEL.INPUT_FORMAT", m.INPUT_FORMAT),
        ("MODEL.PIXEL_MEAN", "[" + ",".join(f"{v:g}" for v in m.PIXEL_MEAN) + "]"),
        ("MODEL.PIXEL_STD", "[" + ",".join(f"{v:g}" for v in m.PIXEL_STD) + "]"),
    ]
    return " ".join(f"{k} {v}" for k, v in pairs)


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="torchvision .pth, MSRA/Caffe2 .pkl or detectron2 .pkl")
    parser.add_argument("output", help="resdet checkpoint to write (.pth)")
    parser.add_argument(
        "--rgb",
        action="store_true",
        help="MSRA weights: reverse conv1's input channels so the model reads RGB (needed for "
        "tools/train_cls.py evaluation, which reads RGB); the mean is reordered to match",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg, fmt = convert_weights(args.source, args.output, to_rgb=args.rgb)
    b = cfg.MODEL.BACKBONE
    print(
        f"{args.source} ({fmt}) -> {args.output}: ResNet-{b.DEPTH}, "
        f"stride in {'1x1' if b.STRIDE_IN_1X1 else '3x3'}, {b.NORM}, "
        f"{cfg.MODEL.INPUT_FORMAT} input, mean {cfg.MODEL.PIXEL_MEAN}, std {cfg.MODEL.PIXEL_STD}"
    )
    print(f"fine-tune a detector from it with:\n  {_overrides(cfg, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
