"""The classification data: datasets and transforms from a Config, and the training stream.

The training stream is :func:`resdet.data.loader.build_detection_loader`'s (an
:class:`~resdet.data.loader.InfiniteSampler` shard, the batches already consumed skipped,
every index tagged with its position in the global stream) with tensor batches; each
sample's augmentation is seeded by that position (:class:`SeededAugment`), so a resumed run
sees exactly the batches an uninterrupted one does -- for any number of DataLoader workers.
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from resdet.config.load import ConfigError
from resdet.config.schema import Config
from resdet.data import cls_transforms as T
from resdet.data.catalog import datasets_root
from resdet.data.cifar import CIFAR10
from resdet.data.imagefolder import ImageFolderDataset
from resdet.data.loader import build_detection_loader
from resdet.data.random_state import seed_compose
from resdet.data.records import DatasetError

logger = logging.getLogger(__name__)

__all__ = [
    "SeededAugment",
    "build_cls_dataset",
    "build_cls_datasets",
    "build_cls_train_loader",
    "build_cls_transforms",
]


def build_cls_transforms(cfg: Config) -> Tuple[Any, Any, Any | None]:
    """``(train, eval, ten_crop or None)`` transforms for ``INPUT.AUGMENT``.

    "imagenet": the paper's scale augmentation (shorter side in SCALE_RANGE), CROP_SIZE crop,
    flip, PCA lighting; "cifar": 4-pixel pad + 32 crop + flip; "generic": scale + crop + flip +
    colour jitter. Evaluation resizes the shorter side to TEST_RESIZE and takes the central
    CROP_SIZE crop ("cifar": the image as is). Normalization: MODEL.PIXEL_MEAN / PIXEL_STD.
    """
    i, mean, std = cfg.INPUT, tuple(cfg.MODEL.PIXEL_MEAN), tuple(cfg.MODEL.PIXEL_STD)
    scale = (int(i.SCALE_RANGE[0]), int(i.SCALE_RANGE[-1]))
    eval_tf = T.imagenet_eval_transform(i.CROP_SIZE, i.TEST_RESIZE, mean, std)
    ten_tf = T.ten_crop_transform(i.CROP_SIZE, i.TEST_RESIZE, mean, std)
    if i.AUGMENT == "imagenet":
        train = T.imagenet_train_transform(i.CROP_SIZE, scale, mean, std, i.PCA_STD)
        return train, eval_tf, ten_tf
    if i.AUGMENT == "generic":
        return T.generic_train_transform(i.CROP_SIZE, mean, std, scale), eval_tf, ten_tf
    if i.AUGMENT == "cifar":
        train = T.cifar_train_transform(mean, std, size=i.CROP_SIZE)
        return train, T.cifar_eval_transform(mean, std), None
    raise ConfigError(
        f"INPUT.AUGMENT: unknown recipe '{i.AUGMENT}'; use 'imagenet', 'cifar' or 'generic'"
    )


def build_cls_dataset(name: str, train: bool, cfg: Config, transform: Any, classes: Any) -> Dataset:
    """One split of ``name`` ("imagenet", "cifar10" or an ImageFolder path), see
    :func:`build_cls_datasets`; ``classes``: the class order of an ImageFolder test split."""
    root = datasets_root()
    cache = cfg.DATALOADER.CACHE_MB * 2**20 if train else 0
    if name == "imagenet":
        return ImageFolderDataset(
            os.path.join(root, "imagenet", "train" if train else "val"),
            transform,
            classes,
            cache_bytes=cache,
        )
    if name == "cifar10":
        val = cfg.DATASETS.CIFAR_VAL_SIZE
        split = "train" if train else ("val" if val > 0 else "test")
        return CIFAR10(os.path.join(root, "cifar-10-batches-py"), split, transform, val)
    return ImageFolderDataset(name, transform, classes, cache_bytes=cache)


def build_cls_datasets(cfg: Config) -> Tuple[Dataset, Dataset | None, List[str]]:
    """``(train without transform, test with the eval transform or None, class names)``.

    ``DATASETS.CLS_TRAIN`` / ``CLS_TEST``: "imagenet" (``<root>/imagenet/train|val``),
    "cifar10" (``<root>/cifar-10-batches-py``; test is the last CIFAR_VAL_SIZE training images
    when > 0, else the test batch) or an ImageFolder path (the test folder uses the training
    class order). ``<root>`` is ``$RESDET_DATASETS`` or ``./datasets``.

    Raises:
        ConfigError: CLS_TRAIN unset or MODEL.NUM_CLASSES differing from the dataset's.
        DatasetError: missing or malformed data (from the dataset classes).
    """
    if not cfg.DATASETS.CLS_TRAIN:
        raise ConfigError("DATASETS.CLS_TRAIN is empty: set 'imagenet', 'cifar10' or a folder")
    _, eval_tf, _ = build_cls_transforms(cfg)
    train = build_cls_dataset(cfg.DATASETS.CLS_TRAIN, True, cfg, None, None)
    names = list(train.class_names)  # type: ignore[attr-defined]
    if len(names) != cfg.MODEL.NUM_CLASSES:
        raise ConfigError(
            f"MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES} but DATASETS.CLS_TRAIN "
            f"'{cfg.DATASETS.CLS_TRAIN}' has {len(names)} classes; "
            f"set MODEL.NUM_CLASSES {len(names)}"
        )
    test = (
        build_cls_dataset(cfg.DATASETS.CLS_TEST, False, cfg, eval_tf, names)
        if cfg.DATASETS.CLS_TEST
        else None
    )
    return train, test, names


class SeededAugment(Dataset):
    """Applies ``transform`` to ``dataset[index]`` with an RNG seeded by (seed, position).

    Items are requested as ``(index, position)``, ``position`` being the sample's place in the
    global training stream (``supports_position_keys``: the loader tags them so).
    ``on_error="skip"`` (``DATASETS.ON_ERROR``): an unreadable image is logged (once per file
    and process, with a running count) and the next readable index is used in its place.
    """

    supports_position_keys = True

    def __init__(self, dataset: Dataset, transform: Any, seed: int, on_error: str = "raise"):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.on_error = on_error
        self._unreadable: set = set()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _read(self, index: int) -> Tuple[torch.Tensor, int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        for _ in range(n):
            try:
                return self.dataset[index]
            except DatasetError as e:
                if self.on_error != "skip":
                    raise DatasetError(
                        f"{e} [index {index}; DATASETS.ON_ERROR skip skips such images, "
                        "tools/check_dataset.py lists all of them]"
                    ) from e
                if index not in self._unreadable:
                    self._unreadable.add(index)
                    logger.warning(
                        "unreadable image skipped (DATASETS.ON_ERROR skip): %s [index %d]; "
                        "%d unreadable images met so far in this process",
                        e,
                        index,
                        len(self._unreadable),
                    )
                index = (index + 1) % n
        raise DatasetError(f"none of the {n} training images could be read")

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, int]:
        index, position = key
        image, label = self._read(index)  # uint8[3, H, W]
        image = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        compose = self.transform.compose
        seed_compose(compose, (self.seed, position))
        return compose(image=image)["image"], label


def build_cls_train_loader(
    cfg: Config,
    dataset: Dataset,
    transform: Any,
    batch_size: int,
    start_iter: int,
    distributed: bool,
) -> DataLoader:
    """The endless training stream of ``dataset`` augmented by ``transform``: ``batch_size``
    images a batch on this process, the first ``start_iter`` batches skipped; batches are
    ``(float[N, 3, H, W], int64[N])``."""
    return build_detection_loader(
        SeededAugment(dataset, transform, cfg.SEED, cfg.DATASETS.ON_ERROR),
        batch_size,
        cfg.DATALOADER.NUM_WORKERS,
        shuffle=True,
        seed=cfg.SEED,
        aspect_grouping=False,
        distributed=distributed,
        infinite=True,
        start_iter=start_iter,
        collate_fn=None,
    )
