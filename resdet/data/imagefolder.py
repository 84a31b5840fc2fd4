"""Image classification from a folder per class (ImageNet ``train/<wnid>/*.JPEG`` layout).

::

    root/
        n01440764/  a.JPEG  b.JPEG ...
        n01443537/  ...

Class directories sorted by name give labels ``0..K-1``; a validation folder must reuse the
training order by passing ``class_names`` (ImageNet's val is laid out the same way after the
usual ``valprep.sh`` reorganisation). Images are decoded with
:func:`resdet.data.image_io.read_image`, so greyscale, RGBA and 16-bit files all arrive as
``uint8[H, W, 3]`` RGB.

Scanning uses ``os.scandir`` and the entry types the directory listing already returns, so a
1.28M-file ImageNet tree is listed without a ``stat`` per file. The paths are kept in one packed
byte buffer plus offsets rather than a Python list of 1.28M strings: DataLoader workers forked
from the main process then share those pages instead of copying them as reference counts are
touched (pytorch/pytorch#13246).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from resdet.data.image_io import IMAGE_EXTENSIONS, DecodedImageCache, read_image
from resdet.data.records import DatasetError

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "scan_image_folder"]


def _list_images(class_dir: str, extensions: Tuple[str, ...]) -> List[str]:
    """Image paths under ``class_dir`` (recursively, as torchvision does), relative to it, sorted.

    Hidden files and directories (leading ".") are skipped.
    """
    found: List[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(class_dir, rel_dir)) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                # String concatenation, not os.path.join: this runs once per ImageNet file.
                rel = rel_dir + os.sep + entry.name if rel_dir else entry.name
                # is_file()/is_dir() use the d_type from the listing: no stat on local disks.
                if entry.is_dir():
                    stack.append(rel)
                elif entry.name.lower().endswith(extensions) and entry.is_file():
                    found.append(rel)
    found.sort()
    return found


def scan_image_folder(
    root: str,
    class_names: Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> Tuple[List[str], List[Tuple[str, int]]]:
    """List ``root/<class>/<images>``.

    Args:
        root: directory with one subdirectory per class.
        class_names: the label order to use (``class_names[i]`` has label ``i``); every class
            directory under ``root`` must be one of them (some may be absent). ``None``: the
            sorted subdirectory names.
        extensions: accepted file suffixes, matched case-insensitively.

    Returns:
        ``(class_names, samples)`` with ``samples`` a list of ``(path relative to root, label)``
        sorted by class then path.

    Raises:
        DatasetError: ``root`` is missing or has no class directories or no images, or a class
            directory is not in ``class_names``.
    """
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: image folder not found (expected root/<class>/<images>)")
    with os.scandir(root) as it:
        dirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not dirs:
        raise DatasetError(f"{root}: no class directories (expected root/<class>/<images>)")

    if class_names is None:
        names = dirs
    else:
        names = list(class_names)
        if len(set(names)) != len(names):
            raise DatasetError(f"{root}: class_names contains duplicates")
    index: Dict[str, int] = {n: i for i, n in enumerate(names)}
    unknown = [d for d in dirs if d not in index]
    if unknown:
        raise DatasetError(
            f"{root}: class director{'y' if len(unknown) == 1 else 'ies'} "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''} not among the {len(names)} "
            "given class names (the training set's classes); a val/test folder must use the "
            "same classes as training"
        )

    exts = tuple(e.lower() for e in extensions)
    samples: List[Tuple[str, int]] = []
    empty: List[str] = []
    for d in dirs:
        files = _list_images(os.path.join(root, d), exts)
        if not files:
            empty.append(d)
        label = index[d]
        prefix = d + os.sep
        samples.extend((prefix + f, label) for f in files)
    if not samples:
        raise DatasetError(f"{root}: no images with extensions {sorted(set(exts))} found")
    if empty:
        logger.warning("%s: %d class directories have no images: %s", root, len(empty), empty[:5])
    missing = len(names) - len(dirs)
    if missing:
        logger.info("%s: %d of the %d classes have no directory", root, missing, len(names))
    return names, samples


class ImageFolderDataset(Dataset):
    """Classification dataset over ``root/<class>/<images>``.

    Args:
        root: directory with one subdirectory per class.
        transform: ``uint8[H, W, 3]`` RGB numpy -> anything (e.g. a
            :mod:`resdet.data.cls_transforms` pipeline). Without one, items are ``uint8[3, H,
            W]`` tensors.
        class_names: label order; pass the training set's ``class_names`` for val/test.
        extensions: accepted file suffixes (case-insensitive).
        cache_bytes: keep decoded images in memory up to this many bytes per process
            (:class:`~resdet.data.image_io.DecodedImageCache`; ``DATALOADER.CACHE_MB`` for
            training); 0: decode on every read.

    Items are ``(transform(image), label)`` with ``label`` an ``int`` in ``0..K-1``.

    Raises:
        DatasetError: see :func:`scan_image_folder`; at ``__getitem__``, an unreadable image
            (the message names the file).
    """

    def __init__(
        self,
        root: str,
        transform: Callable[[np.ndarray], Any] | None = None,
        class_names: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        cache_bytes: int = 0,
    ) -> None:
        self.root = root
        self.transform = transform
        self.cache = DecodedImageCache(cache_bytes) if cache_bytes else None
        self.class_names, samples = scan_image_folder(root, class_names, extensions)
        encoded = [p.encode("utf-8") for p, _ in samples]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._paths = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.labels: np.ndarray = np.array([label for _, label in samples], dtype=np.int64)
        logger.info(
            "ImageFolder %s: %d images in %d classes", root, len(self.labels), len(self.class_names)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        """Full path of image ``index``."""
        rel = self._paths[self._offsets[index] : self._offsets[index + 1]].tobytes()
        return os.path.join(self.root, rel.decode("utf-8"))

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = index % len(self)
        if self.cache is None:
            image = read_image(self.path(index))
        else:
            image = self.cache.get(index, lambda: read_image(self.path(index)))
        label = int(self.labels[index])
        if self.transform is not None:
            return self.transform(image), label
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label
