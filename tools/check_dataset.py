"""Check datasets in full (every annotation, every image) and report every problem.

    python tools/check_dataset.py --config configs/coco_r50_fpn.yaml   # DATASETS.TRAIN + TEST
    python tools/check_dataset.py --dataset coco_2017_val --dataset voc_2007_test
    python tools/check_dataset.py --dataset "yolo data=my/data.yaml split=val"
    python tools/check_dataset.py --coco-json my/annotations.json --image-root my/images
    python tools/check_dataset.py --image-folder datasets/imagenet/train
    python tools/check_dataset.py --dataset shapes_train --draw 16 --draw-dir look/

With a classification config the CLS_TRAIN / CLS_TEST folders (or CIFAR-10 batches) are
checked. Annotations are loaded in "skip" mode so one problem does not hide the next; then
every image is decoded (``--workers`` threads, with a progress bar) and its size compared with
the annotated one. Nothing is modified. Exit code: 0 no problems, 1 problems (all listed),
2 bad arguments or config.

``--draw N`` also writes, per detection dataset, into ``--draw-dir``/<dataset>/: N random
images with their boxes and class names (``sample_000.jpg``...; crowd and difficult objects
dashed) and ``labels.png`` (objects per class, box widths / heights / sizes, box centres).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from typing import List

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.config import load_config
from resdet.data.catalog import datasets_root, register_coco_instances
from resdet.data.check import (
    DatasetReport,
    check_cifar10,
    check_detection_dataset,
    check_image_folder,
    format_report,
)
from resdet.data.dataset_plots import draw_dataset
from resdet.data.image_io import set_max_image_pixels
from resdet.utils.cli import tool_entry, tool_parser
from resdet.utils.logging import setup_logging
from resdet.utils.output import writing


def _classification_reports(cfg, args: argparse.Namespace) -> List[DatasetReport]:
    reports: List[DatasetReport] = []
    train_classes = None
    for key, split in (("CLS_TRAIN", "train"), ("CLS_TEST", "val")):
        name = getattr(cfg.DATASETS, key)
        if not name:
            continue
        if name == "cifar10":
            reports.append(check_cifar10(os.path.join(datasets_root(), "cifar-10-batches-py")))
            continue
        root = os.path.join(datasets_root(), "imagenet", split) if name == "imagenet" else name
        report = check_image_folder(
            root, train_classes, args.workers, not args.no_progress, not args.annotations_only
        )
        if key == "CLS_TRAIN" and not report.fatal:
            train_classes = report.class_names  # the test folder must use the training order
        reports.append(report)
    return reports


@tool_entry
def main(argv: List[str] | None = None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", help="check DATASETS.TRAIN/TEST (or CLS_TRAIN/CLS_TEST)")
    parser.add_argument(
        "--dataset", action="append", default=[], help="registered name or source spec"
    )
    parser.add_argument("--coco-json", help="a COCO json not in the catalog (with --image-root)")
    parser.add_argument("--image-root", help="image directory of --coco-json")
    parser.add_argument("--image-folder", action="append", default=[], help="root/<class>/<img>")
    parser.add_argument("--workers", type=int, default=4, help="image decoding threads")
    parser.add_argument("--annotations-only", action="store_true", help="do not decode images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--max-notes", type=int, default=10, help="notes listed per kind (0: all)")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument(
        "--draw",
        type=int,
        default=0,
        metavar="N",
        help="draw N sample images and labels.png per detection dataset",
    )
    parser.add_argument("--draw-dir", default="dataset_draw", help="where --draw writes")
    parser.add_argument(
        "--max-image-pixels", type=int, default=None,
        help="report images declaring more pixels as decompression bombs, without decoding "
        "them (default: INPUT.MAX_IMAGE_PIXELS, 178956970; 0: no limit)",
    )  # fmt: skip
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides (with --config)")
    args = parser.parse_intermixed_args(argv)
    if not (args.config or args.dataset or args.coco_json or args.image_folder):
        parser.error("name something to check: --config, --dataset, --coco-json or --image-folder")
    if bool(args.coco_json) != bool(args.image_root):
        parser.error("--coco-json and --image-root go together")
    if args.draw < 0:
        parser.error(f"--draw must be >= 0, got {args.draw}")
    # The report lists every problem; the loaders' own warnings would repeat them on stderr.
    setup_logging(None, level=logging.ERROR)

    names: List[str] = list(args.dataset)
    reports: List[DatasetReport] = []
    cfg = load_config(args.config, args.opts) if args.config else load_config()
    limit = cfg.INPUT.MAX_IMAGE_PIXELS if args.max_image_pixels is None else args.max_image_pixels
    set_max_image_pixels(limit)
    if args.config:
        if cfg.MODEL.ARCH == "classifier":
            reports += _classification_reports(cfg, args)
        else:
            names += [n for n in [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST] if n not in names]
    if args.coco_json:
        name = "check:" + os.path.basename(args.coco_json)
        register_coco_instances(name, args.coco_json, args.image_root, overwrite=True)
        names.append(name)
    decode = not args.annotations_only
    for name in names:
        reports.append(check_detection_dataset(name, args.workers, not args.no_progress, decode))
    for root in args.image_folder:
        reports.append(check_image_folder(root, None, args.workers, not args.no_progress, decode))

    print(format_report(reports, args.max_notes))
    if args.draw and not names:
        print("--draw: draws detection datasets only; none was named", file=sys.stderr)
    if args.draw:
        for name in names:
            folder = os.path.join(args.draw_dir, re.sub(r"[^\w.+-]", "_", name))
            written = draw_dataset(name, args.draw, folder)
            print(f"{name}: {len(written)} pictures in {folder}")
    if args.json:
        with writing(args.json), open(args.json, "w", encoding="utf-8") as f:
            json.dump([dataclasses.asdict(r) for r in reports], f, indent=1)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
