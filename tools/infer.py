"""Run a trained detector on images: pictures with boxes drawn, and one COCO-style json.

    python tools/infer.py --weights output/demo/det/model_final.pth --input photos/ --output out/
    python tools/infer.py --config configs/coco_r101.yaml --weights model.pth \\
        --input street.jpg --output out/ --score-thresh 0.7 --device cpu

``--input`` is an image file or a folder (searched recursively for .jpg/.jpeg/.png/.bmp/.webp/
.tif/.tiff). For each image ``--output`` gets a copy with boxes, class names and scores drawn
(same relative path; JPEG stays JPEG, anything else becomes PNG), and ``detections.json``
holds every detection: ``{"image_id", "file_name", "category_id", "category_name",
"bbox": [x, y, w, h] in original pixels, "score"}`` (COCO results format plus file and class
names; ``image_id`` is the image's index in sorted order). Greyscale, RGBA, palette and 16-bit
images of any size are read as RGB. Without ``--config`` the config stored in the checkpoint
is used. Unreadable images are reported and skipped (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Tuple

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.utils.cli import tool_entry

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(path: str) -> Tuple[List[str], str]:
    """``(image paths sorted, root)``; root is the folder relative output paths start from."""
    if os.path.isfile(path):
        return [path], os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--input: no such file or folder: {path}")
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTS)]
    return sorted(found), os.path.abspath(path)


def output_path(image_path: str, root: str, output_dir: str) -> str:
    rel = os.path.relpath(os.path.abspath(image_path), root)
    stem, ext = os.path.splitext(rel)
    return os.path.join(output_dir, stem + (ext if ext.lower() in (".jpg", ".jpeg") else ".png"))


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="YAML config (default: the checkpoint's)")
    parser.add_argument("--weights", required=True, help="detector checkpoint (.pth)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for pictures and detections.json")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="keep scores above this")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--no-pictures", action="store_true", help="write only detections.json")
    parser.add_argument(
        "--max-image-pixels", type=int, default=None,
        help="refuse images declaring more pixels (default: INPUT.MAX_IMAGE_PIXELS; 0: no limit)",
    )  # fmt: skip
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = parser.parse_intermixed_args(argv)
    if not 0.0 <= args.score_thresh < 1.0:
        parser.error(f"--score-thresh must be in [0, 1), got {args.score_thresh}")

    import numpy as np
    from tqdm import tqdm

    from resdet.config import ConfigError
    from resdet.data.image_io import set_max_image_pixels
    from resdet.data.records import DatasetError
    from resdet.predictor import Predictor, to_rgb_uint8
    from resdet.utils.visualization import draw_detections, save_image

    try:
        paths, root = list_images(args.input)
        if not paths:
            raise FileNotFoundError(f"--input: no images ({', '.join(IMAGE_EXTS)}) in {args.input}")
        predictor = Predictor(
            args.config, args.weights, args.device, args.score_thresh, overrides=args.opts
        )
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    limit = args.max_image_pixels
    set_max_image_pixels(predictor.cfg.INPUT.MAX_IMAGE_PIXELS if limit is None else limit)

    os.makedirs(args.output, exist_ok=True)
    results, failed, num_dets = [], [], 0
    for image_id, path in enumerate(tqdm(paths, desc="infer", unit="img", disable=len(paths) < 2)):
        try:
            rgb = to_rgb_uint8(path, path)
        except DatasetError as e:
            failed.append(str(e))
            tqdm.write(f"skipped: {e}", file=sys.stderr)
            continue
        dets = predictor(rgb)
        num_dets += len(dets)
        for entry in dets.to_coco(image_id, predictor.category_ids):
            results.append({"image_id": image_id, "file_name": path, **entry})
        if not args.no_pictures:
            out = output_path(path, root, args.output)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            picture = draw_detections(
                rgb, dets.boxes, dets.labels, dets.scores, predictor.class_names
            )
            save_image(out, np.ascontiguousarray(picture))
    json_path = os.path.join(args.output, "detections.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f)
    done = len(paths) - len(failed)
    print(f"{done} images, {num_dets} detections (score > {args.score_thresh}) -> {args.output}")
    if failed:
        print(f"{len(failed)} images could not be read:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
