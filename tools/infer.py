"""Run a trained detector on images and videos: pictures and videos with boxes drawn, and json.

    python tools/infer.py --weights output/demo/det/model_final.pth --input photos/ --output out/
    python tools/infer.py --config configs/coco_r101.yaml --weights model.pth \\
        --input street.jpg --output out/ --score-thresh 0.7 --device cpu
    python tools/infer.py --weights model.pth --input "photos/**/*.png" clip.mp4 --output out/ \\
        --classes circle,star --batch-size 4

``--input`` takes image files, folders (searched recursively for .jpg/.jpeg/.png/.bmp/.webp/
.tif/.tiff images and .mp4/.avi/.mov/.mkv/.webm/.m4v/.mpg/.mpeg/.wmv videos), glob patterns
(expanded here, ``**`` recursive) and video files. For each image ``--output`` gets a copy
with boxes, class names and scores drawn (same path relative to its folder or the pattern's
folder; JPEG stays JPEG, anything else becomes PNG), and ``detections.json`` holds every
detection: ``{"image_id", "file_name", "category_id", "category_name", "bbox": [x, y, w, h]
in original pixels, "score"}`` (COCO results format plus file and class names; ``image_id``
is the image's index in input order). Each video gives ``<name>.mp4`` (annotated, mp4v, the
source's frame rate) and ``<name>.jsonl`` (one line per frame: ``{"frame", "time",
"detections": [...]}``), with a progress bar. Greyscale, RGBA, palette and 16-bit images of
any size are read as RGB. Without ``--config`` the config stored in the checkpoint is used.
Unreadable images and videos are reported and skipped (exit status 1); bad arguments, an
unknown class name or an unusable checkpoint exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.utils.cli import add_threads_argument, threads_override, tool_entry, tool_parser

CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+$")


def output_path(image_path: str, root: str, output_dir: str) -> str:
    rel = os.path.relpath(os.path.abspath(image_path), root)
    stem, ext = os.path.splitext(rel)
    return os.path.join(output_dir, stem + (ext if ext.lower() in (".jpg", ".jpeg") else ".png"))


def _split_overrides(args: argparse.Namespace) -> None:
    """``--input`` takes several values, so ``KEY VALUE`` overrides right after it land in
    ``args.input``: move them (from the first upper-case dotted key that is not a file) to
    ``args.opts``."""
    for i, value in enumerate(args.input):
        if CONFIG_KEY.match(value) and not os.path.exists(value):
            args.opts = args.input[i:] + list(args.opts)
            args.input = args.input[:i]
            return


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", default=None, help="YAML config (default: the checkpoint's)")
    parser.add_argument("--weights", required=True, help="detector checkpoint (.pth)")
    parser.add_argument(
        "--input", required=True, nargs="+", help="image / video files, folders, glob patterns"
    )
    parser.add_argument("--output", required=True, help="folder for pictures, videos and json")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="keep scores above this")
    parser.add_argument("--classes", default="", help="keep only these classes: name1,name2")
    parser.add_argument("--batch-size", type=int, default=1, help="images / frames per pass")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--no-pictures", action="store_true", help="write only the json files")
    add_threads_argument(parser)
    parser.add_argument(
        "--max-image-pixels", type=int, default=None,
        help="refuse images declaring more pixels (default: INPUT.MAX_IMAGE_PIXELS; 0: no limit)",
    )  # fmt: skip
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = parser.parse_intermixed_args(argv)
    _split_overrides(args)
    args.opts += threads_override(args.threads)
    if not args.input:
        parser.error("--input: name at least one image, folder, glob pattern or video")
    if not 0.0 <= args.score_thresh < 1.0:
        parser.error(f"--score-thresh must be in [0, 1), got {args.score_thresh}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")

    import numpy as np
    from tqdm import tqdm

    from resdet.config import ConfigError
    from resdet.data.records import DatasetError
    from resdet.media import annotate_video, class_filter, collect_inputs, keep_labels
    from resdet.predictor import Predictor, to_rgb_uint8
    from resdet.utils.visualization import draw_detections, save_image

    try:
        inputs = collect_inputs(args.input)
        if not (inputs.images or inputs.videos):
            raise FileNotFoundError(f"--input: no images or videos in {' '.join(args.input)}")
        limit = args.max_image_pixels
        opts = [*args.opts, *(["INPUT.MAX_IMAGE_PIXELS", str(limit)] if limit is not None else [])]
        predictor = Predictor(
            args.config, args.weights, args.device, args.score_thresh, overrides=opts,
            batch_size=args.batch_size,
        )  # fmt: skip
        labels = class_filter(args.classes, predictor.class_names)
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    limit = predictor.cfg.INPUT.MAX_IMAGE_PIXELS  # the checkpoint's or config's, or the flag's

    os.makedirs(args.output, exist_ok=True)
    results, failed, num_dets = [], [], 0
    images = inputs.images
    bar = tqdm(total=len(images), desc="infer", unit="img", disable=len(images) < 2)
    for start in range(0, len(images), args.batch_size):
        batch = []  # (image id, path, root, rgb) of the readable images of this batch
        for image_id in range(start, min(start + args.batch_size, len(images))):
            path, root = images[image_id]
            try:
                batch.append((image_id, path, root, to_rgb_uint8(path, path, limit)))
            except DatasetError as e:
                failed.append(str(e))
                tqdm.write(f"skipped: {e}", file=sys.stderr)
        found = predictor.predict_batch([b[3] for b in batch]) if batch else []
        for (image_id, path, root, rgb), dets in zip(batch, found):
            dets = keep_labels(dets, labels)
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
        bar.update(min(args.batch_size, len(images) - start))
    bar.close()
    bad_images = len(failed)
    if images:
        with open(os.path.join(args.output, "detections.json"), "w", encoding="utf-8") as f:
            json.dump(results, f)
    frames = 0
    for video in inputs.videos:
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(video))[0])
        try:
            done = annotate_video(
                predictor, video, None if args.no_pictures else stem + ".mp4", stem + ".jsonl",
                labels,
            )  # fmt: skip
        except DatasetError as e:
            failed.append(str(e))
            print(f"error: {e}", file=sys.stderr)
            continue
        frames += done["frames"]
        num_dets += done["detections"]
    print(
        f"{len(images) - bad_images} images, {len(inputs.videos) - len(failed) + bad_images} "
        f"videos ({frames} frames), {num_dets} detections (score > {args.score_thresh}) -> "
        f"{args.output}"
    )
    if failed:
        print(f"{len(failed)} inputs could not be read:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
