"""Sampling, batching and the DataLoaders of both tasks.

Detection batches hold images of different sizes; the model pads them to one tensor. Grouping
landscape (``w / h >= 1``) and portrait images into separate batches keeps that padding small
(detectron2 ``AspectRatioGroupedDataset``, torchvision ``GroupedBatchSampler``).

Iteration-based training uses :class:`InfiniteSampler` (one endless, seeded index stream shared
by all ranks and sharded by rank, as detectron2's ``TrainingSampler``), which makes exact resume
a matter of skipping what was already consumed. The classification training stream is the
same loader with tensor batches (:func:`resdet.data.cls_dataset.build_cls_train_loader`).
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import cv2
import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from resdet.config.schema import Config
from resdet.data.det_dataset import DetectionDataset
from resdet.data.det_transforms import build_det_transforms
from resdet.data.records import DetectionRecord

logger = logging.getLogger(__name__)


class InfiniteSampler(Sampler[int]):
    """Yield dataset indices forever: shuffled permutations (or ``0..size-1`` repeated).

    The stream is one function of ``seed``, identical on every rank; rank ``r`` takes every
    ``world_size``-th element starting at ``r``, so ranks never share an index within a pass.

    Args:
        size: dataset length (> 0).
        shuffle: a fresh ``torch.randperm`` per pass, else sequential passes.
        seed: seed of the permutation stream (use the same one on all ranks).
        rank, world_size: this process's shard.
        start_iter_offset: number of this rank's samples to skip at the start, e.g.
            ``iteration * batch_size`` to resume exactly where a run stopped (without aspect
            grouping; with grouping skip whole batches, see :func:`build_detection_loader`).
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_iter_offset: int = 0,
    ) -> None:
        if size <= 0:
            raise ValueError(f"InfiniteSampler needs a non-empty dataset, got size={size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if start_iter_offset < 0:
            raise ValueError(f"start_iter_offset must be >= 0, got {start_iter_offset}")
        self.size = size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.start_iter_offset = start_iter_offset

    def _global_stream(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=g).tolist()
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[int]:
        mine = itertools.islice(self._global_stream(), self.rank, None, self.world_size)
        return itertools.islice(mine, self.start_iter_offset, None)


class AspectRatioGroupedBatchSampler(Sampler[List[int]]):
    """Batches whose images all have the same orientation (``w / h >= 1`` or ``< 1``).

    Indices from ``sampler`` go into a buffer per orientation; a buffer that reaches
    ``batch_size`` is yielded. With an infinite sampler this never ends. With a finite one it
    yields exactly ``len(sampler) // batch_size`` batches like torchvision's
    ``GroupedBatchSampler``: when the sampler runs out, partial buffers (largest first) are
    completed with indices repeated from the same orientation, and leftover indices are dropped.
    Use it for training only; evaluation must see every image exactly once.

    Args:
        sampler: yields dataset indices.
        aspect_ratios: ``width / height`` per dataset index.
        batch_size: images per batch (per process).
    """

    def __init__(self, sampler: Sampler[int], aspect_ratios: Sequence[float], batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = [0 if float(a) >= 1.0 else 1 for a in aspect_ratios]
        self.batch_size = batch_size

    def __len__(self) -> int:
        # Raises TypeError for an infinite sampler, as an infinite iterable should.
        return len(self.sampler) // self.batch_size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[List[int]]:
        buffers: Dict[int, List[int]] = defaultdict(list)
        seen: Dict[int, List[int]] = defaultdict(list)
        n_batches = 0
        for idx in self.sampler:
            group = self.group_ids[idx]
            buffers[group].append(idx)
            seen[group].append(idx)
            if len(buffers[group]) == self.batch_size:
                yield buffers[group]
                buffers[group] = []
                n_batches += 1
        remaining = len(self) - n_batches
        for group in sorted(buffers, key=lambda g: len(buffers[g]), reverse=True):
            if remaining <= 0:
                break
            batch = buffers[group]
            if not batch:
                continue
            fill = itertools.cycle(seen[group])
            while len(batch) < self.batch_size:
                batch.append(next(fill))
            yield batch
            remaining -= 1


class _SkipBatches(Sampler[List[int]]):
    """Drop the first ``skip`` batches of a batch sampler: exact resume that only replays indices
    (no image is decoded), whatever buffering the batch sampler does."""

    def __init__(self, batch_sampler: Sampler[List[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[List[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)  # type: ignore[arg-type]


class _PositionedBatches(Sampler[List[Tuple[int, int]]]):
    """Tag each index with its place in the global training stream: ``(index, position)``.

    ``position = (batch_number * batch_size + slot) * world_size + rank``, with batch numbers
    counted from the start of training (skipped batches included). Without aspect grouping
    that is the index's position in :class:`InfiniteSampler`'s global stream, so one process
    with ``batch_size * world_size`` images per batch gives every image the same position,
    hence the same augmentation, as ``world_size`` processes do.
    """

    def __init__(
        self,
        batch_sampler: Sampler[List[int]],
        first_batch: int,
        batch_size: int,
        rank: int,
        world_size: int,
    ) -> None:
        self.batch_sampler = batch_sampler
        self.first_batch = first_batch
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for b, batch in enumerate(self.batch_sampler, start=self.first_batch):
            yield [
                (idx, (b * self.batch_size + j) * self.world_size + self.rank)
                for j, idx in enumerate(batch)
            ]


def collate_detection(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Keep the batch a list of per-image dicts: sizes differ, the model pads."""
    return list(batch)


def worker_init(worker_id: int) -> None:
    """Every DataLoader worker of resdet starts here."""
    # opencv's own thread pool inside every worker oversubscribes the CPU (workers × cores
    # threads) and can deadlock after fork; the workers already give the parallelism.
    cv2.setNumThreads(0)


def build_detection_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int,
    aspect_grouping: bool = True,
    distributed: bool = False,
    infinite: bool = False,
    start_iter: int = 0,
    collate_fn: Callable[[List[Any]], Any] | None = collate_detection,
) -> DataLoader:
    """The detection DataLoader; batches are lists of sample dicts (:func:`collate_detection`).

    Args:
        dataset: a :class:`~resdet.data.det_dataset.DetectionDataset` (or any dataset with
            ``aspect_ratios() -> list[float]`` when ``aspect_grouping``).
        batch_size: images per batch on this process.
        num_workers: DataLoader worker processes (0: load in the main process).
        shuffle: random order (training) or the dataset order (evaluation).
        seed: seeds the sampling order and, through the DataLoader generator, the workers'
            augmentation seeds (offset by rank so ranks augment differently).
        aspect_grouping: one orientation per batch (training only; ignored without shuffle so
            evaluation sees every image once).
        distributed: shard across ``torch.distributed`` ranks (``DistributedSampler``; call
            ``loader.sampler.set_epoch(epoch)`` each epoch) or, when ``infinite``, an
            :class:`InfiniteSampler` shard.
        infinite: iterate forever with :class:`InfiniteSampler` (iteration-based training).
        start_iter: with ``infinite``, the number of batches already consumed: they are
            skipped so a resumed run sees exactly the batches it would have seen.
        collate_fn: how a batch's samples are put together; None: torch's default (stacked
            tensors, the classification batches).

    With ``infinite`` and a dataset that has ``supports_position_keys`` (a
    :class:`~resdet.data.det_dataset.DetectionDataset`), items are requested as
    ``(index, stream position)`` and augmented with a seed derived from the position: the
    same images get the same augmentation for any number of workers, after a resume, and in a
    single process fed the global batch of a multi-process run.

    Returns:
        a ``torch.utils.data.DataLoader``.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    sampler: Sampler[int]
    if infinite:
        sampler = InfiniteSampler(
            len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world
        )  # type: ignore[arg-type]
    elif distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed
        )
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)

    batch_sampler: Sampler[List[int]]
    if aspect_grouping and (shuffle or infinite):
        if not hasattr(dataset, "aspect_ratios"):
            raise TypeError(
                f"aspect grouping needs dataset.aspect_ratios(); {type(dataset)} has none"
            )
        batch_sampler = AspectRatioGroupedBatchSampler(sampler, dataset.aspect_ratios(), batch_size)
    else:
        batch_sampler = BatchSampler(sampler, batch_size, drop_last=False)
    if start_iter:
        if not infinite:
            raise ValueError("start_iter skipping is only defined for infinite=True")
        batch_sampler = _SkipBatches(batch_sampler, start_iter)
    if infinite and getattr(dataset, "supports_position_keys", False):
        batch_sampler = _PositionedBatches(batch_sampler, start_iter, batch_size, rank, world)

    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        worker_init_fn=worker_init,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed + rank),
    )


def build_detection_test_loader(
    cfg: Config,
    records: Sequence[DetectionRecord],
    *,
    distributed: bool = False,
    drop_difficult: bool = False,
    resize: bool = True,
) -> DataLoader:
    """The loader of a detection test set: ``INPUT.MIN/MAX_SIZE_TEST`` resize, no flip, the
    dataset order, ``TEST.IMS_PER_BATCH`` images a batch. ``resize=False`` keeps the images
    as they are on disk (test-time augmentation resizes each view itself).

    With ``DATASETS.ON_ERROR skip`` an unreadable test image becomes a grey one (logged): every
    image id still gets an answer, so an evaluation counts its objects as missed instead of
    failing. ``drop_difficult`` leaves VOC's difficult objects out of the targets (the
    validation loss, like training); evaluation keeps them (the VOC devkit ignores them).
    """
    transform = (
        build_det_transforms(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, 0.0, is_train=False)
        if resize
        else None
    )
    on_error = "blank" if cfg.DATASETS.ON_ERROR == "skip" else "raise"
    dataset = DetectionDataset(
        list(records), transform, drop_difficult=drop_difficult, on_error=on_error
    )
    return build_detection_loader(
        dataset,
        cfg.TEST.IMS_PER_BATCH,
        cfg.DATALOADER.NUM_WORKERS,
        shuffle=False,
        seed=cfg.SEED,
        aspect_grouping=False,
        distributed=distributed,
    )
