"""CIFAR-10 from the standard ``cifar-10-batches-py`` directory.

Layout (as downloaded from https://www.cs.toronto.edu/~kriz/cifar.html)::

    cifar-10-batches-py/
        data_batch_1 ... data_batch_5   50,000 training images, 10,000 per file
        test_batch                      10,000 test images
        batches.meta                    {"label_names": [...10 names...], ...}

Each batch is a pickled dict whose ``data`` is ``uint8[10000, 3072]``: per row the 1024 R
values, then G, then B, each plane row-major 32×32; ``labels`` is a list of ints in 0..9. The
files were written by Python 2, so they are read with :func:`safe_load_pickle` and
``encoding="latin1"`` (keys may arrive as ``str`` or ``bytes``; both are accepted).

Splits (He et al. Sec. 4.2 train on 45k and validate on 5k): ``val`` is the *last* ``val_size``
images of the 50k training set in file order (data_batch_5's tail for the default 5,000),
``train`` is the rest, ``trainval`` all 50k, ``test`` the test batch. The split is fixed and
deterministic, not shuffled, so every run and every tool sees the same 45k/5k partition;
CIFAR's batches are already in random order, so the tail is an unbiased sample.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Callable, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from resdet.data.records import DatasetError
from resdet.utils.safe_pickle import safe_load_pickle

logger = logging.getLogger(__name__)

__all__ = ["CIFAR10", "CIFAR10_SPLITS", "load_cifar10_arrays"]

CIFAR10_SPLITS = ("train", "val", "trainval", "test")
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
_SUBDIR = "cifar-10-batches-py"
_PIXELS = 3 * 32 * 32


def _resolve_root(root: str) -> str:
    """Accept either the batches directory itself or its parent."""
    nested = os.path.join(root, _SUBDIR)
    if not os.path.isfile(os.path.join(root, META_FILE)) and os.path.isdir(nested):
        return nested
    return root


def _field(d: Any, key: str, path: str) -> Any:
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    for k in (key, key.encode("ascii")):
        if k in d:
            return d[k]
    raise DatasetError(f"{path}: missing key {key!r} (found keys: {sorted(map(str, d))[:8]})")


def _load(path: str) -> Any:
    if not os.path.isfile(path):
        raise DatasetError(
            f"{path}: CIFAR-10 file not found; expected the python version "
            f"('{_SUBDIR}' with data_batch_1..5, test_batch, batches.meta)"
        )
    try:
        return safe_load_pickle(path, encoding="latin1")
    except (pickle.UnpicklingError, OSError) as e:
        raise DatasetError(f"{path}: cannot read CIFAR-10 batch: {e}") from e


def _load_batch(path: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """One batch file -> (``uint8[N, 32, 32, 3]`` RGB, ``int64[N]`` labels)."""
    batch = _load(path)
    data = _field(batch, "data", path)
    labels = _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(f"{path}: 'data' must be an array [N, {_PIXELS}], got {shape}")
    if data.dtype != np.uint8:
        raise DatasetError(f"{path}: 'data' must be uint8, got {data.dtype}")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{path}: 'labels' must be {len(data)} integers (one per row of 'data'), "
            f"got shape {labels.shape} dtype {labels.dtype}"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DatasetError(
            f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
            f"0..{num_classes - 1}"
        )
    # R, G, B planes of 32x32 -> HWC RGB, the layout read_image produces for other datasets.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _load_class_names(root: str) -> List[str]:
    path = os.path.join(root, META_FILE)
    names = _field(_load(path), "label_names", path)
    if not isinstance(names, (list, tuple)) or not names:
        raise DatasetError(f"{path}: 'label_names' must be a non-empty list of names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar10_arrays(
    root: str, files: Tuple[str, ...]
) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Read batch ``files`` under ``root`` (or ``root/cifar-10-batches-py``).

    Returns:
        ``(images uint8[N, 32, 32, 3] RGB, labels int64[N], class_names)`` in file order.

    Raises:
        DatasetError: a file is missing, is not a safe pickle, or has the wrong fields/shapes.
    """
    root = _resolve_root(root)
    class_names = _load_class_names(root)
    parts = [_load_batch(os.path.join(root, f), len(class_names)) for f in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return images, labels, class_names


class CIFAR10(Dataset):
    """CIFAR-10 as a torch ``Dataset`` of ``(image, label)``.

    Args:
        root: the ``cifar-10-batches-py`` directory, or the directory containing it.
        split: ``"train"`` (first ``50000 - val_size`` training images), ``"val"`` (last
            ``val_size``), ``"trainval"`` (all 50k) or ``"test"`` (``test_batch``).
        transform: ``uint8[32, 32, 3]`` RGB numpy -> anything (e.g.
            :func:`resdet.data.cls_transforms.cifar_train_transform`). Without one, items are
            ``uint8[3, 32, 32]`` tensors.
        val_size: size of the held-out tail; ``0`` makes ``train`` the full 50k (and ``val``
            an error).

    Attributes:
        images: ``uint8[N, 32, 32, 3]`` RGB, kept in memory (150 MB for the 50k).
        labels: ``int64[N]`` in ``0..9``.
        class_names: from ``batches.meta``.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        transform: Callable[[np.ndarray], Any] | None = None,
        val_size: int = 5000,
    ) -> None:
        if split not in CIFAR10_SPLITS:
            raise ValueError(f"CIFAR10: split must be one of {CIFAR10_SPLITS}, got {split!r}")
        self.root = _resolve_root(root)
        self.split = split
        self.transform = transform
        files = TEST_FILES if split == "test" else TRAIN_FILES
        images, labels, self.class_names = load_cifar10_arrays(self.root, files)

        if split in ("train", "val"):
            n = len(images)
            if not 0 <= val_size < n:
                raise DatasetError(
                    f"{self.root}: val_size={val_size} must be in [0, {n}) for {n} training images"
                )
            if split == "val" and val_size == 0:
                raise DatasetError(f"{self.root}: split 'val' is empty because val_size=0")
            cut = n - val_size
            sl = slice(0, cut) if split == "train" else slice(cut, n)
            # Copies, so the unused part of the 50k can be freed.
            images, labels = images[sl].copy(), labels[sl].copy()
        self.images: np.ndarray = images
        self.labels: np.ndarray = labels
        logger.info("CIFAR-10 %s: %d images from %s", split, len(self.images), self.root)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image = self.images[index]
        if self.transform is not None:
            return self.transform(image), int(self.labels[index])
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), int(
            self.labels[index]
        )

    def channel_mean_std(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        """Per-channel RGB mean and std of this split's pixels, in 0–255 units.

        Use on the training split to get the normalization for the cls transforms.
        """
        total = np.zeros(3)
        total_sq = np.zeros(3)
        # Chunked so 50k images never exist as one float64 copy (1.2 GB).
        for start in range(0, len(self.images), 2048):
            chunk = self.images[start : start + 2048].reshape(-1, 3).astype(np.float64)
            total += chunk.sum(0)
            total_sq += (chunk * chunk).sum(0)
        count = max(1, len(self.images) * 32 * 32)
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
        return tuple(mean.tolist()), tuple(std.tolist())
