"""Reading images from disk: any mode in, 3-channel RGB uint8 out.

Decompression bombs: a PNG of under 1 MB can declare 30000x30000 pixels (8.5 GB once decoded).
Before decoding, :func:`read_image` reads the size the file's header declares (Pillow's format
plugins parse the header only) and refuses images of more than ``max_pixels`` pixels with a
:class:`DatasetError` naming the file and its declared size. The default limit is Pillow's own
error threshold (``2 * PIL.Image.MAX_IMAGE_PIXELS`` = 178,956,970 pixels, e.g. 13,377 x 13,377);
``INPUT.MAX_IMAGE_PIXELS`` (training, evaluation), ``--max-image-pixels`` (tools that read
images) or the ``RESDET_MAX_IMAGE_PIXELS`` environment variable change it process-wide through
:func:`set_max_image_pixels`; the ``Predictor`` passes its config's value per call; 0 turns the
check off.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import cv2
import numpy as np

from resdet.data.records import DatasetError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DecodedImageCache",
    "IMAGE_EXTENSIONS",
    "declared_size",
    "get_max_image_pixels",
    "read_image",
    "set_max_image_pixels",
]

# File suffixes read_image (opencv) decodes, lower case; the dataset formats match them
# case-insensitively.
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # 2 * PIL.Image.MAX_IMAGE_PIXELS: Pillow's error limit

# Process-wide, like PIL.Image.MAX_IMAGE_PIXELS: DataLoader workers fork after the engine set
# it from the config, and every reader (datasets, checker, Predictor, tools) sees one value.
_max_image_pixels = int(os.environ.get("RESDET_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS))


def set_max_image_pixels(limit: int) -> None:
    """Refuse images whose header declares more than ``limit`` pixels (0: no limit)."""
    global _max_image_pixels
    if limit < 0:
        raise ValueError(f"the image pixel limit must be >= 0 (0: no limit), got {limit}")
    _max_image_pixels = int(limit)


def get_max_image_pixels() -> int:
    """The current limit (0: no limit)."""
    return _max_image_pixels


def declared_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` declared by an image file's header, without decoding the pixels.

    Returns None for a format Pillow does not know (opencv's own limit, 2^30 pixels, then
    applies) or a header it cannot parse (the decoder reports that file as corrupt).
    """
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow warns (and over twice its limit raises) at its own fixed threshold; the
        # limit that matters here is ours, compared by the caller.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.size
        except Image.DecompressionBombError:
            pass  # identified, but over Pillow's limit: ask the plugin itself for the size
        except Exception:  # UnidentifiedImageError, or a header Pillow cannot parse
            return None
    prefix = data[:16]
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept else False
        if accepted and not isinstance(accepted, str):  # a str is Pillow's "close, but no"
            try:
                return factory(io.BytesIO(data), "").size
            except Exception:
                continue
    return None


def _check_pixels(path: str, data: np.ndarray, limit: int) -> None:
    if limit <= 0:
        return
    size = declared_size(data.tobytes())
    if size is not None and size[0] * size[1] > limit:
        w, h = size
        raise DatasetError(
            f"{path}: image declares {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} "
            "(a decompression bomb?); not decoded. Raise INPUT.MAX_IMAGE_PIXELS / "
            "--max-image-pixels if the image is genuine"
        )


def read_image(path: str, max_pixels: Optional[int] = None) -> np.ndarray:
    """Decode an image file with opencv.

    Greyscale, RGBA/palette, 16-bit and EXIF-rotated files all arrive as ``uint8[H, W, 3]`` RGB,
    upright as a viewer shows them (``IMREAD_COLOR`` applies the EXIF orientation).

    Args:
        path: the image file.
        max_pixels: refuse files whose header declares more pixels than this, before decoding
            (default: :func:`get_max_image_pixels`; 0: no limit).

    Raises:
        DatasetError: the file is missing, declares more than ``max_pixels`` pixels, or is not
            a decodable image (corrupt or truncated).
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise DatasetError(f"{path}: image file is empty")
    limit = _max_image_pixels if max_pixels is None else max_pixels
    _check_pixels(path, data, limit)
    # IMREAD_ANYDEPTH keeps 16-bit data so it can be scaled rather than clipped.
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise DatasetError(f"{path}: cannot decode image (corrupt, truncated or not an image)")
    if limit > 0 and img.shape[0] * img.shape[1] > limit:
        # A format whose header Pillow could not read: too late to save the memory, but the
        # image is refused all the same.
        raise DatasetError(
            f"{path}: image has {img.shape[1]}x{img.shape[0]} pixels, over the limit of "
            f"{limit:,}; raise INPUT.MAX_IMAGE_PIXELS / --max-image-pixels if it is genuine"
        )
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


class DecodedImageCache:
    """Decoded training images kept in this process's memory, up to ``max_bytes``
    (``DATALOADER.CACHE_MB``; what Ultralytics calls ``cache=ram``).

    A training run decodes every image once an epoch; for a dataset that fits, the cache makes
    it once a run. Decoding is half the data cost of the demo's 64 px PNG crops (0.6 of 1.2 ms
    a crop on the AVX2 EPYC) and nearly all of it for large photos. Images are kept as first
    read until the budget is full, then read from disk as before (no eviction: under uniformly
    shuffled epochs any policy keeps the same fraction). Each data-loader worker holds its own
    cache (the budget is per process). Cached arrays are made read-only: numpy and opencv
    refuse to write into them, so a transform doing so fails loudly instead of altering later
    epochs; ``torch.from_numpy`` of one only warns, which is why the datasets hand torch a copy
    (their HWC -> CHW transpose).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"DATALOADER.CACHE_MB must be >= 0, got {max_bytes / 2**20:g}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._images: Dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._images)

    def get(self, key: int, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """The image cached under ``key``, else ``decode()`` (kept if it fits the budget)."""
        image = self._images.get(key)
        if image is not None:
            return image
        image = decode()
        if self.nbytes + image.nbytes <= self.max_bytes:
            image = np.ascontiguousarray(image)
            image.setflags(write=False)
            self._images[key] = image
            self.nbytes += image.nbytes
        return image
