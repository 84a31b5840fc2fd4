"""Inference on what users have: image files, folders, glob patterns and video files.

``tools/infer.py`` is a thin wrapper over these:

- :func:`collect_inputs` turns ``--input`` values into image and video paths: a file (a video
  by its extension, else an image), a folder (searched recursively for both), or a glob
  pattern (``"photos/**/*.jpg"``, expanded here, so it works quoted and on shells that do
  not expand it).
- :func:`class_filter` maps ``--classes name1,name2`` to label indices (an unknown name is an
  error naming the close matches and the model's classes).
- :func:`annotate_video` runs a :class:`~resdet.predictor.Predictor` over every frame of a
  video (opencv ``VideoCapture``), in batches, and writes an annotated copy (``VideoWriter``,
  ``mp4v``, the source's frame rate and size) and one JSON line per frame.
"""

from __future__ import annotations

import difflib
import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from resdet.data.records import DatasetError
from resdet.predictor import Detections, Predictor
from resdet.utils.visualization import draw_detections

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "MediaInputs",
    "annotate_video",
    "class_filter",
    "collect_inputs",
    "keep_labels",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass
class MediaInputs:
    """What ``--input`` named. ``images`` are ``(path, root)``: the picture of ``path`` goes to
    the same path relative to ``root`` under the output folder."""

    images: List[Tuple[str, str]] = field(default_factory=list)
    videos: List[str] = field(default_factory=list)


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTS)


def _walk(folder: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [
            os.path.join(dirpath, f)
            for f in filenames
            if f.lower().endswith(IMAGE_EXTS + VIDEO_EXTS)
        ]
    return sorted(found)


def _glob_root(pattern: str) -> str:
    """The folder part of ``pattern`` before its first wildcard."""
    parts = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    root = os.sep.join(parts) if len(parts) < len(pattern.split(os.sep)) else ""
    return os.path.abspath(root or os.path.dirname(pattern) or ".")


def collect_inputs(specs: Sequence[str]) -> MediaInputs:
    """Resolve ``--input`` values (files, folders, glob patterns), in the given order, each
    file once.

    Raises:
        FileNotFoundError: a path that does not exist or a pattern that matches nothing.
    """
    out = MediaInputs()
    seen = set()

    def add(path: str, root: str) -> None:
        key = os.path.abspath(path)
        if key in seen:
            return
        seen.add(key)
        if _is_video(path):
            out.videos.append(path)
        else:
            out.images.append((path, root))

    for spec in specs:
        if glob.has_magic(spec) and not os.path.exists(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise FileNotFoundError(f"--input: no file matches the pattern {spec}")
            root = _glob_root(spec)
            for m in matches:
                if os.path.isdir(m):
                    for f in _walk(m):
                        add(f, root)
                elif m.lower().endswith(IMAGE_EXTS + VIDEO_EXTS):
                    add(m, root)
        elif os.path.isfile(spec):
            add(spec, os.path.dirname(os.path.abspath(spec)))
        elif os.path.isdir(spec):
            for f in _walk(spec):
                add(f, os.path.abspath(spec))
        else:
            raise FileNotFoundError(f"--input: no such file or folder: {spec}")
    return out


def class_filter(spec: str, class_names: Sequence[str]) -> Optional[np.ndarray]:
    """``"cat,dog"`` -> the labels of those classes (``int64[M]``); ``""`` -> None (keep all).

    Raises:
        ValueError: a name that is not one of ``class_names`` (with the closest ones).
    """
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        return None
    labels = []
    for name in names:
        if name not in class_names:
            close = difflib.get_close_matches(name, class_names, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"--classes: unknown class '{name}'; {hint}the model's classes are "
                f"{', '.join(class_names)}"
            )
        labels.append(list(class_names).index(name))
    return np.asarray(labels, np.int64)


def keep_labels(dets: Detections, labels: Optional[np.ndarray]) -> Detections:
    """``dets`` restricted to the given labels (all of them when ``labels`` is None)."""
    if labels is None:
        return dets
    keep = np.isin(dets.labels, labels)
    return Detections(
        dets.boxes[keep], dets.scores[keep], dets.labels[keep], dets.class_names, dets.image_size
    )


def _open_video(path: str) -> cv2.VideoCapture:
    # FFmpeg would print its own diagnostics ("moov atom not found") for a broken file; the
    # error raised below says it once, with the file name.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise DatasetError(f"{path}: cannot open as a video (not a video, or a codec opencv lacks)")
    return cap


def annotate_video(
    predictor: Predictor,
    path: str,
    video_out: Optional[str],
    jsonl_out: str,
    labels: Optional[np.ndarray] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Detect objects in every frame of the video ``path``.

    Args:
        predictor: runs ``predictor.batch_size`` frames per forward pass.
        video_out: the annotated video (``mp4v``, the source's fps and size); None: none.
        jsonl_out: one line per frame, ``{"frame": i, "time": seconds, "detections": [COCO
            results entries without image_id: category_id, category_name, bbox [x, y, w, h]
            in frame pixels, score]}``.
        labels: keep only these labels (:func:`class_filter`).
        progress: a tqdm bar over the frames.

    Returns:
        ``{"frames": n, "detections": n, "expected_frames": n or None}``.

    Raises:
        DatasetError: the file cannot be opened or has no readable frame (names the file).
        OSError: the annotated video cannot be written.
    """
    from tqdm import tqdm

    cap = _open_video(path)
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if np.isfinite(fps) and fps > 0 else 25.0
    expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer: Optional[cv2.VideoWriter] = None
    frames = num_dets = 0
    bar = tqdm(total=expected, desc=os.path.basename(path), unit="frame", disable=not progress)
    try:
        with open(jsonl_out, "w", encoding="utf-8") as lines:
            for batch in _frame_batches(cap, predictor.batch_size):
                for rgb, dets in zip(batch, predictor.predict_batch(batch)):
                    dets = keep_labels(dets, labels)
                    entries = dets.to_coco(frames, predictor.category_ids)
                    for e in entries:
                        del e["image_id"]  # the frame number says it
                    t = round(frames / fps, 4)
                    lines.write(json.dumps({"frame": frames, "time": t, "detections": entries}))
                    lines.write("\n")
                    num_dets += len(dets)
                    frames += 1
                    if video_out is not None:
                        if writer is None:
                            writer = _video_writer(video_out, fps, rgb.shape[1], rgb.shape[0])
                        picture = draw_detections(
                            rgb, dets.boxes, dets.labels, dets.scores, dets.class_names
                        )
                        writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                bar.update(len(batch))
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        os.remove(jsonl_out)
        raise DatasetError(f"{path}: no frame could be decoded (an empty or broken video)")
    if expected and frames < expected:
        logger.warning("%s: read %d of %d frames (a truncated file?)", path, frames, expected)
    return {"frames": frames, "detections": num_dets, "expected_frames": expected}


def _frame_batches(cap: cv2.VideoCapture, size: int) -> Iterator[List[np.ndarray]]:
    """Lists of up to ``size`` consecutive RGB frames until the video ends."""
    while True:
        batch: List[np.ndarray] = []
        while len(batch) < size:
            ok, frame = cap.read()
            if not ok:
                break
            batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        if not batch:
            return
        yield batch
        if len(batch) < size:
            return


def _video_writer(path: str, fps: float, width: int, height: int) -> cv2.VideoWriter:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: cannot write an mp4v video here")
    return writer
