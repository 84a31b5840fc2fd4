"""Convert ResNet weights or whole Faster R-CNN detectors from torchvision, MSRA/Caffe2 or
detectron2 to resdet.

    python tools/convert_weights.py resnet50-0676ba61.pth weights/r50_torchvision.pth
    python tools/convert_weights.py R-50.pkl weights/r50_msra.pth
    python tools/convert_weights.py R-50.pkl weights/r50_msra_rgb.pth --rgb
    python tools/convert_weights.py fasterrcnn_resnet50_fpn_coco-258fb6c6.pth weights/tv_r50_fpn.pth
    python tools/convert_weights.py model_final_f10217.pkl weights/d2_r50_fpn_3x.pth

A whole detector becomes a detector checkpoint whose stored config reproduces the source's
behaviour; the same config is written beside it as ``<output>.yaml``, to train or evaluate with
(``--config weights/tv_r50_fpn.yaml MODEL.WEIGHTS weights/tv_r50_fpn.pth``).

The output is a resdet checkpoint {"model", "config", "meta"}; its config records what the
weights need (depth, stride placement, norm, input channel order, pixel mean/std). The command
prints the config overrides a detector needs to start from these weights. ``.pkl`` files are
read with a restricted unpickler: a pickle naming anything but containers and numpy arrays is
refused without running it. Checkpoints written by tools/train_cls.py need no conversion.
"""

from __future__ import annotations

import logging
import os
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.config.load import save_config
from resdet.export.convert import convert_weights
from resdet.utils.cli import tool_entry, tool_parser


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
    parser = tool_parser(__doc__)
    parser.add_argument("source", help="torchvision .pth, MSRA/Caffe2 .pkl or detectron2 .pkl")
    parser.add_argument("output", help="resdet checkpoint to write (.pth)")
    parser.add_argument(
        "--rgb",
        action="store_true",
        help="MSRA weights: reverse conv1's input channels so the model reads RGB (needed for "
        "tools/train_cls.py evaluation, which reads RGB); the mean is reordered to match",
    )
    parser.add_argument(
        "--keep-na-classes",
        action="store_true",
        help="torchvision COCO detectors: keep the 10 unused 'N/A' outputs (90 classes, exactly "
        "the source's softmax) instead of COCO's 80 classes with their real ids",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg, fmt = convert_weights(
        args.source, args.output, to_rgb=args.rgb, keep_unused_classes=args.keep_na_classes
    )
    b = cfg.MODEL.BACKBONE
    if fmt.endswith("-detector"):
        yaml_path = os.path.splitext(args.output)[0] + ".yaml"
        save_config(cfg, yaml_path)
        head = "FPN" if b.NAME == "resnet_fpn" else "C4"
        print(
            f"{args.source} ({fmt}) -> {args.output}: R{b.DEPTH}-{head}, "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES} classes, {cfg.MODEL.INPUT_FORMAT} input; "
            f"config {yaml_path}"
        )
        print(f"run it:       python tools/infer.py --weights {args.output} --input photo.jpg")
        print(
            f"fine-tune it: python tools/train_det.py --config {yaml_path} "
            f"MODEL.WEIGHTS {args.output} DATASETS.TRAIN '<your data>' DATASETS.TEST "
            "'<your val data>' MODEL.ROI_HEADS.NUM_CLASSES 0 OUTPUT_DIR output/finetune"
        )
        return 0
    print(
        f"{args.source} ({fmt}) -> {args.output}: ResNet-{b.DEPTH}, "
        f"stride in {'1x1' if b.STRIDE_IN_1X1 else '3x3'}, {b.NORM}, "
        f"{cfg.MODEL.INPUT_FORMAT} input, mean {cfg.MODEL.PIXEL_MEAN}, std {cfg.MODEL.PIXEL_STD}"
    )
    print(f"fine-tune a detector from it with:\n  {_overrides(cfg, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
