"""DetectionDataset items, aspect-ratio grouping, InfiniteSampler and the detection loader."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, SequentialSampler

from resdet.data.det_dataset import DetectionDataset
from resdet.data.det_transforms import build_det_transforms
from resdet.data.loader import (
    AspectRatioGroupedBatchSampler,
    InfiniteSampler,
    build_detection_loader,
    collate_detection,
)
from resdet.data.records import DatasetError, DetectionRecord


def _write_image(path: Path, h: int, w: int) -> str:
    bgr = np.zeros((h, w, 3), np.uint8)
    bgr[..., 0] = 200  # blue in opencv's BGR order
    bgr[:, : w // 2, 2] = 100  # some red on the left half
    cv2.imwrite(str(path), bgr)  # PNG: lossless, so the pixel values are exact
    return str(path)


def _record(tmp_path: Path, h: int = 20, w: int = 40) -> DetectionRecord:
    return DetectionRecord(
        file_name=_write_image(tmp_path / "img.png", h, w),
        image_id=17,
        height=h,
        width=w,
        boxes=[[0, 0, 10, 10], [5, 5, 30, 15], [20, 2, 40, 20]],
        labels=[0, 1, 2],
        iscrowd=[False, True, False],
        difficult=[False, False, True],
    )


def test_dataset_item_layout_and_rgb(tmp_path: Path) -> None:
    item = DetectionDataset([_record(tmp_path)], transform=None, drop_difficult=False)[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 20, 40)
    # RGB, not BGR, and not normalized.
    assert item["image"][2].unique().tolist() == [200]
    assert item["image"][0, :, :20].unique().tolist() == [100]
    assert item["image"][0, :, 20:].unique().tolist() == [0]
    assert item["boxes"].dtype == torch.float32 and item["boxes"].shape == (3, 4)
    assert item["labels"].tolist() == [0, 1, 2] and item["labels"].dtype == torch.int64
    assert item["iscrowd"].tolist() == [False, True, False]
    assert item["image_id"] == 17 and item["orig_size"] == (20, 40)
    assert item["file_name"].endswith("img.png")


def test_dataset_drops_difficult_and_keeps_flags_aligned_through_flip(tmp_path: Path) -> None:
    t = build_det_transforms((10,), 1000, flip_prob=1.0, is_train=True, seed=0)
    item = DetectionDataset([_record(tmp_path)], transform=t)[0]
    assert item["image"].shape == (3, 10, 20)
    assert item["labels"].tolist() == [0, 1]  # the difficult box (label 2) is gone
    assert item["iscrowd"].tolist() == [False, True]
    # Half scale, then flipped in a 20-wide image.
    np.testing.assert_allclose(
        item["boxes"].numpy(), [[15, 0, 20, 5], [5, 2.5, 17.5, 7.5]], atol=1e-4
    )


def test_dataset_size_mismatch_names_file_and_sizes(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    rec.height = 21
    with pytest.raises(DatasetError) as info:
        DetectionDataset([rec])[0]
    message = str(info.value)
    assert rec.file_name in message and "20x40" in message and "21x40" in message


def test_dataset_rejects_transform_that_loses_boxes(tmp_path: Path) -> None:
    def drop_one(image, boxes, labels):
        return image, boxes[:1], labels[:1]

    with pytest.raises(ValueError, match="changed the number of boxes"):
        DetectionDataset([_record(tmp_path)], transform=drop_one)[0]


class _Fake(Dataset):
    """Cheap stand-in: items are indices, aspect ratios are given."""

    def __init__(self, ratios: List[float]) -> None:
        self.ratios = ratios

    def __len__(self) -> int:
        return len(self.ratios)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {"index": i}

    def aspect_ratios(self) -> List[float]:
        return self.ratios


def _ratios(n: int = 50, seed: int = 0) -> List[float]:
    return np.random.default_rng(seed).choice([0.5, 0.75, 1.0, 1.33, 2.0], n).tolist()


def test_aspect_grouping_finite_batches_are_one_orientation() -> None:
    ratios = _ratios()
    sampler = AspectRatioGroupedBatchSampler(SequentialSampler(range(50)), ratios, batch_size=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12  # 50 // 4, like torchvision's sampler
    for batch in batches:
        assert len(batch) == 4
        assert len({ratios[i] >= 1 for i in batch}) == 1
    used = set(itertools.chain.from_iterable(batches))
    assert len(used) >= 48 - 3  # at most one partial buffer per group gets padded


def test_aspect_grouping_with_infinite_sampler() -> None:
    ratios = _ratios(seed=1)
    sampler = AspectRatioGroupedBatchSampler(InfiniteSampler(50, seed=3), ratios, batch_size=3)
    batches = list(itertools.islice(iter(sampler), 100))
    assert all(len({ratios[i] >= 1 for i in b}) == 1 for b in batches)
    assert {ratios[b[0]] >= 1 for b in batches} == {True, False}
    with pytest.raises(TypeError):
        len(sampler)


def test_infinite_sampler_deterministic_permutations() -> None:
    a = list(itertools.islice(iter(InfiniteSampler(10, seed=5)), 30))
    assert a == list(itertools.islice(iter(InfiniteSampler(10, seed=5)), 30))
    assert a != list(itertools.islice(iter(InfiniteSampler(10, seed=6)), 30))
    for k in range(3):  # each pass is a permutation, and passes differ
        assert sorted(a[10 * k : 10 * k + 10]) == list(range(10))
    assert a[:10] != a[10:20]
    sequential = list(itertools.islice(iter(InfiniteSampler(4, shuffle=False)), 10))
    assert sequential == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_infinite_sampler_rank_shards_and_skip() -> None:
    full = list(itertools.islice(iter(InfiniteSampler(7, seed=2)), 40))
    r0 = list(itertools.islice(iter(InfiniteSampler(7, seed=2, rank=0, world_size=2)), 20))
    r1 = list(itertools.islice(iter(InfiniteSampler(7, seed=2, rank=1, world_size=2)), 20))
    assert r0 == full[0::2] and r1 == full[1::2]
    skipped = InfiniteSampler(7, seed=2, rank=1, world_size=2, start_iter_offset=5)
    assert list(itertools.islice(iter(skipped), 15)) == r1[5:]


def test_collate_keeps_a_list() -> None:
    batch = [{"a": 1}, {"a": 2}]
    assert collate_detection(batch) == batch


def _indices(loader, n: int) -> List[List[int]]:
    return [[d["index"] for d in b] for b in itertools.islice(iter(loader), n)]


def test_loader_eval_sees_every_image_once_in_order() -> None:
    ds = _Fake(_ratios(10))
    loader = build_detection_loader(ds, batch_size=3, num_workers=0, shuffle=False, seed=0)
    assert _indices(loader, 100) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_loader_shuffled_is_seeded_and_grouped() -> None:
    ds = _Fake(_ratios(40))

    def epoch(seed: int) -> List[List[int]]:
        return _indices(build_detection_loader(ds, 4, 0, shuffle=True, seed=seed), 100)

    first = epoch(1)
    assert len(first) == 10 and first == epoch(1) and first != epoch(2)
    assert all(len({ds.ratios[i] >= 1 for i in b}) == 1 for b in first)


def test_loader_infinite_resume_skips_exact_batches() -> None:
    ds = _Fake(_ratios(30, seed=4))
    fresh = build_detection_loader(ds, 4, 0, shuffle=True, seed=9, infinite=True)
    resumed = build_detection_loader(ds, 4, 0, shuffle=True, seed=9, infinite=True, start_iter=7)
    assert _indices(resumed, 20) == _indices(fresh, 27)[7:]
    with pytest.raises(ValueError, match="only defined for infinite"):
        build_detection_loader(ds, 4, 0, shuffle=True, seed=9, start_iter=3)


def test_loader_workers_augment_differently(tmp_path: Path) -> None:
    # Each worker must reseed the albumentations pipeline; forked copies would repeat flips.
    records = []
    for i in range(16):
        rec = _record(tmp_path)
        rec.image_id = i
        records.append(rec)
    ds = DetectionDataset(records, build_det_transforms(20, 100, 0.5, is_train=True, seed=0))
    loader = build_detection_loader(ds, 1, num_workers=2, shuffle=False, seed=0)
    flips = [b[0]["boxes"][0, 0].item() > 0 for b in loader]
    worker0, worker1 = flips[0::2], flips[1::2]  # batches alternate between the two workers
    assert worker0 != worker1
    # ...and the worker seeds come from the loader's seeded generator: reproducible.
    again = build_detection_loader(ds, 1, num_workers=2, shuffle=False, seed=0)
    assert [b[0]["boxes"][0, 0].item() > 0 for b in again] == flips
