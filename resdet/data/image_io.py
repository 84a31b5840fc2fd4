"""Reading images from disk: any mode in, 3-channel RGB uint8 out."""

from __future__ import annotations

import os

import cv2
import numpy as np

from resdet.data.records import DatasetError


def read_image(path: str) -> np.ndarray:
    """Decode an image file with opencv.

    Greyscale, RGBA/palette, 16-bit and EXIF-rotated files all arrive as ``uint8[H, W, 3]`` RGB,
    upright as a viewer shows them (``IMREAD_COLOR`` applies the EXIF orientation).

    Raises:
        DatasetError: the file is missing, or is not a decodable image (corrupt or truncated).
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise DatasetError(f"{path}: image file is empty")
    # IMREAD_ANYDEPTH keeps 16-bit data so it can be scaled rather than clipped.
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise DatasetError(f"{path}: cannot decode image (corrupt, truncated or not an image)")
    if _looks_truncated(data, path):
        raise DatasetError(f"{path}: image file is truncated (missing end-of-image marker)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def _looks_truncated(data: np.ndarray, path: str) -> bool:
    """opencv decodes a truncated JPEG into a grey-filled image with only a warning; catch it."""
    is_jpeg = data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8
    if not is_jpeg:
        return False
    tail = data[-64:].tobytes()
    return b"\xff\xd9" not in tail
