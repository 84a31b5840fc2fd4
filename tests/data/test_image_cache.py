"""Decoded images kept in memory (DATALOADER.CACHE_MB): within the budget, read once, same items."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from custom_data import make_voc, write_image

from resdet.config.load import load_config
from resdet.data.cls_dataset import build_cls_datasets
from resdet.data.det_dataset import DetectionDataset
from resdet.data.det_transforms import build_det_transforms
from resdet.data.image_io import DecodedImageCache
from resdet.data.imagefolder import ImageFolderDataset
from resdet.data.records import DatasetError
from resdet.data.voc import load_voc


def test_the_cache_keeps_what_fits_and_decodes_the_rest_each_time() -> None:
    calls = []

    def decode(key: int):
        calls.append(key)
        return np.full((10, 10, 3), key, np.uint8)  # 300 bytes

    cache = DecodedImageCache(max_bytes=700)  # room for two
    first = [cache.get(k, lambda k=k: decode(k)) for k in range(4)]
    second = [cache.get(k, lambda k=k: decode(k)) for k in range(4)]
    assert calls == [0, 1, 2, 3, 2, 3]
    assert len(cache) == 2 and cache.nbytes == 600
    assert second[0] is first[0] and all(int(a[0, 0, 0]) == k for k, a in enumerate(second))
    with pytest.raises(ValueError, match="read-only"):
        second[0][0, 0, 0] = 9  # a transform writing into a cached image fails loudly
    with pytest.raises(ValueError, match="CACHE_MB must be >= 0"):
        DecodedImageCache(-1)


def _folder(root) -> str:
    for k in range(6):
        write_image(os.path.join(root, "ab"[k % 2], f"{k}.png"), 12 + k, 9, seed=k)
    return str(root)


def test_image_folder_serves_cached_images_after_the_files_are_gone(tmp_path) -> None:
    root = _folder(tmp_path / "train")
    plain = ImageFolderDataset(root)
    cached = ImageFolderDataset(root, cache_bytes=2**20)
    expected = [plain[i] for i in range(len(plain))]
    got = [cached[i] for i in range(len(cached))]
    for (a, la), (b, lb) in zip(expected, got):
        assert torch.equal(a, b) and la == lb
    for k in range(6):
        os.remove(os.path.join(root, "ab"[k % 2], f"{k}.png"))
    again = [cached[i] for i in range(len(cached))]  # from memory: nothing left on disk
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(expected, again))
    with pytest.raises(DatasetError, match="not found"):
        plain[0]


def test_a_small_budget_caches_part_and_reads_the_rest_from_disk(tmp_path) -> None:
    root = _folder(tmp_path / "train")
    ds = ImageFolderDataset(root, cache_bytes=2 * 9 * 14 * 3)  # the first two images only
    for i in range(len(ds)):
        ds[i]
    assert len(ds.cache) == 2
    os.remove(ds.path(5))
    ds[0], ds[1]  # cached
    with pytest.raises(DatasetError, match="5.png: image file not found"):
        ds[5]


def test_classification_training_caches_its_train_split_only(tmp_path) -> None:
    train, test = _folder(tmp_path / "train"), _folder(tmp_path / "val")
    opts = ["MODEL.NUM_CLASSES", "2", "DATASETS.CLS_TRAIN", train, "DATASETS.CLS_TEST", test]
    cfg = load_config("configs/shapes_cls_r18.yaml", opts + ["DATALOADER.CACHE_MB", "3"])
    train_set, test_set, _ = build_cls_datasets(cfg)
    assert train_set.cache.max_bytes == 3 * 2**20 and test_set.cache is None
    off = load_config("configs/shapes_cls_r18.yaml", opts + ["DATALOADER.CACHE_MB", "0"])
    train_set, _, _ = build_cls_datasets(off)
    assert train_set.cache is None


def test_detection_items_are_the_same_with_the_cache_epoch_after_epoch(tmp_path) -> None:
    boxes = [("cat", 3, 4, 30, 20), ("dog", 10, 2, 40, 28)]
    images = {f"im{k}": (48 + 4 * k, 32, boxes) for k in range(4)}
    root = make_voc(str(tmp_path / "voc"), "train", images)
    records, _ = load_voc(root, "", "train", class_names=["cat", "dog"])
    transform = build_det_transforms([24, 40], 64, 0.5, is_train=True)
    plain = DetectionDataset(records, transform, seed=3)
    cached = DetectionDataset(records, transform, seed=3, cache_bytes=2**20)
    for position in range(12):  # three epochs: flips and scales differ per position
        a, b = plain[(position % 4, position)], cached[(position % 4, position)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    assert len(cached.cache) == 4
    for rec in records:
        os.remove(rec.file_name)
    assert cached[(0, 99)]["image"].shape[0] == 3  # served from memory
