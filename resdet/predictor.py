"""Detections for one image in three lines::

    from resdet import Predictor
    predictor = Predictor("configs/shapes_r18_fpn.yaml", "output/demo/det/model_final.pth")
    dets = predictor("photo.jpg")   # or an RGB uint8 array [H, W, 3] / [H, W] / [H, W, 4]
    dets.boxes, dets.scores, dets.labels, dets.names()

The Predictor builds the detector the config describes, loads the weights, resizes each image
with the config's test transform (shorter side ``INPUT.MIN_SIZE_TEST``, longer side at most
``INPUT.MAX_SIZE_TEST``) and returns detections in the **original** image's pixels.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from resdet.accel import inference_model, set_threads
from resdet.config.load import config_from_dict, load_config, save_config
from resdet.config.schema import Config
from resdet.data.catalog import dataset_class_names
from resdet.data.det_transforms import build_det_transforms
from resdet.data.image_io import read_image
from resdet.data.records import DatasetError
from resdet.engine.amp import autocast_factory
from resdet.engine.checkpoint import load_checkpoint, load_model_weights
from resdet.engine.runtime import resolve_device
from resdet.evaluation.tta import DetectorWithTTA
from resdet.modeling.detection.build import build_detector

logger = logging.getLogger(__name__)

__all__ = ["Detections", "Predictor", "resolve_class_names", "to_rgb_uint8"]


@dataclass
class Detections:
    """What the detector found in one image.

    Attributes:
        boxes: ``float32[D, 4]`` absolute xyxy pixels of the original image.
        scores: ``float32[D]``, sorted high to low.
        labels: ``int64[D]`` contiguous class indices ``0..K-1``.
        class_names: the ``K`` class names (index = label).
        image_size: ``(height, width)`` of the original image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: List[str]
    image_size: Tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)

    def names(self) -> List[str]:
        """The class name of each detection."""
        return [self.class_names[int(i)] for i in self.labels]

    def to_coco(
        self, image_id: int, category_ids: Optional[Sequence[int]] = None
    ) -> List[Dict[str, Any]]:
        """COCO results entries: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
        plus ``"category_name"``. ``category_ids[label]`` maps labels to dataset ids (default
        ``label + 1``)."""
        out = []
        for box, score, label in zip(self.boxes, self.scores, self.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            lab = int(label)
            out.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_ids[lab]) if category_ids else lab + 1,
                    "category_name": self.class_names[lab],
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )
        return out


def to_rgb_uint8(image: Any, source: str = "image", max_pixels: Optional[int] = None) -> np.ndarray:
    """Any image to ``uint8[H, W, 3]`` RGB.

    Accepts a file path (decoded by :func:`resdet.data.image_io.read_image`: any mode, EXIF
    rotation applied; a file declaring more than ``max_pixels`` pixels is refused before
    decoding, default the process-wide limit, 0 none), a PIL image, or an array ``[H, W]``
    (grey), ``[H, W, 1]``, ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA: alpha dropped).
    Non-uint8 arrays are taken to be 0-255.

    Raises:
        DatasetError: unreadable file, or an array of another shape (names ``source``).
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image), max_pixels)
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL.Image, without importing PIL
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float32)), 0, 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise DatasetError(
            f"{source}: expected an image [H, W], [H, W, 3] or [H, W, 4], got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def resolve_class_names(
    cfg: Config, extra: Optional[Dict[str, Any]] = None
) -> Tuple[List[str], Optional[List[int]]]:
    """Class names (and dataset category ids, if known) for a detector's labels ``0..K-1``.

    Looked up in order: the checkpoint's ``extra["class_names"]`` (written by the training
    hooks), the names of ``DATASETS.TEST`` / ``DATASETS.TRAIN`` (registered names or source
    specs: :func:`resdet.data.catalog.dataset_class_names`), else ``"class_<i>"`` with a
    warning.
    A list whose length differs from ``MODEL.ROI_HEADS.NUM_CLASSES`` is skipped with a warning.
    """
    k = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    extra = extra or {}
    names = extra.get("class_names")
    if names is not None:
        if len(names) == k:
            ids = extra.get("category_ids")
            return [str(n) for n in names], list(ids) if ids and len(ids) == k else None
        logger.warning("checkpoint has %d class names but the model %d classes", len(names), k)
    for dataset in [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]:
        try:
            names, ids = dataset_class_names(dataset)
        except (DatasetError, OSError, ValueError) as e:
            logger.info("no class names from dataset %s: %s", dataset, e)
            continue
        if len(names) == k:
            return names, ids or None
        logger.warning("dataset %s has %d classes, the model %d", dataset, len(names), k)
    logger.warning("no class names in the checkpoint or the config's datasets: using class_<i>")
    return [f"class_{i}" for i in range(k)], None


def _with_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of ``cfg`` with ``KEY VALUE`` overrides applied (through a YAML round trip, so
    they are parsed and checked exactly as on the command line). The caller's ``cfg`` is never
    changed: the Predictor resolves settings (the class count, the score threshold) on its own
    copy."""
    if not overrides:
        return copy.deepcopy(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        save_config(cfg, path)
        return load_config(path, overrides)


class Predictor:
    """A detector ready to run on single images or lists of them.

    ``predictor(image)`` returns one :class:`Detections`; ``predictor([image, ...])`` (or
    :meth:`predict_batch`) returns one per image, in order, running up to ``batch_size``
    images per forward pass. Images enter a batch only with images of the same padded input
    size (the resized size rounded up to the model's size divisibility): a smaller image padded
    further would change the features near its right and bottom edges, so the batched answer
    equals the one-by-one answer (within float rounding of the batched kernels). Video frames
    and camera photos share one size and batch fully.

    Args:
        config: a :class:`Config` (copied: the Predictor never changes it), a YAML path, or
            None to use the config stored in the checkpoint (every resdet checkpoint has one).
        weights: a resdet detector checkpoint (``.pth``).
        device: "auto" (CUDA when available), "cpu" or "cuda".
        score_thresh: keep detections scoring above this (default ``SCORE_THRESH_TEST``).
        overrides: ``KEY VALUE`` config overrides applied after loading ``config``
            (e.g. ``["SOLVER.AMP.ENABLED", "True"]`` for bf16 inference, as evaluation does).
        batch_size: images per forward pass when given a list (default 1). With test-time
            augmentation (``TEST.AUG.ENABLED``) each image runs alone, one pass per view, and
            ``score_thresh`` applies to the fused scores (``self.tta.score_thresh``); the
            views, and ``self.cfg``'s ``SCORE_THRESH_TEST``, keep the lower of it and the
            config's.

    Raises:
        FileNotFoundError / RuntimeError: unreadable checkpoint.
        ValueError: the config describes no detector, a tensor's shape differs from the model's
            (names the key and both shapes), or the checkpoint lacks some of the model's
            tensors (e.g. a classification checkpoint).
    """

    def __init__(
        self,
        config: Union[Config, str, None],
        weights: str,
        device: str = "auto",
        score_thresh: Optional[float] = None,
        overrides: Sequence[str] = (),
        batch_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        ckpt = load_checkpoint(weights)
        if config is None:
            if not ckpt.get("config"):
                raise ValueError(f"{weights} stores no config: pass the config file")
            cfg = _with_overrides(config_from_dict(ckpt["config"], weights), overrides)
        elif isinstance(config, Config):
            cfg = _with_overrides(config, overrides)
        else:
            cfg = load_config(config, overrides)
        if cfg.MODEL.ARCH != "faster_rcnn":
            raise ValueError(
                f"the config describes a '{cfg.MODEL.ARCH}', not a detector (MODEL.ARCH)"
            )
        if cfg.MODEL.ROI_HEADS.NUM_CLASSES == 0:
            # A training config that left the count to the data: the checkpoint's config (saved
            # by the training run) holds the resolved count.
            stored = (ckpt.get("config") or {}).get("MODEL", {}).get("ROI_HEADS", {})
            if not stored.get("NUM_CLASSES"):
                raise ValueError(
                    "MODEL.ROI_HEADS.NUM_CLASSES is 0 and the checkpoint's config has no class "
                    f"count: set MODEL.ROI_HEADS.NUM_CLASSES for {weights}"
                )
            cfg.MODEL.ROI_HEADS.NUM_CLASSES = int(stored["NUM_CLASSES"])
        if cfg.INPUT.MAX_IMAGE_PIXELS < 0:
            raise ValueError(
                f"INPUT.MAX_IMAGE_PIXELS is {cfg.INPUT.MAX_IMAGE_PIXELS}; expected a pixel "
                "count, or 0 for no limit"
            )
        fused_thresh = None
        if score_thresh is not None and cfg.TEST.AUG.ENABLED:
            # The views keep a threshold no higher than the config's, the fused scores get
            # this one: a box one view scores under it may still be found by the mean vote.
            fused_thresh = float(score_thresh)
            r = cfg.MODEL.ROI_HEADS
            r.SCORE_THRESH_TEST = min(r.SCORE_THRESH_TEST, fused_thresh)
        elif score_thresh is not None:
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_thresh)
        self.cfg = cfg
        self.device = resolve_device(device if device != "auto" else cfg.MODEL.DEVICE)
        model = build_detector(cfg)
        result = load_model_weights(model, ckpt, log=True, source=str(weights))
        if result.missing_keys:
            raise ValueError(
                f"{weights}: {len(result.missing_keys)} of the detector's tensors are not in the "
                f"checkpoint (e.g. {', '.join(result.missing_keys[:4])}): is it a classification "
                "checkpoint? Detector weights come from tools/train_det.py."
            )
        self.model = model.to(self.device).eval()
        set_threads(cfg.ACCEL.THREADS)  # 0 (the default) keeps the process's count
        # What __call__ runs: a folded (and on CPU fused) copy with TEST.FAST_INFERENCE;
        # ``model`` stays the plain module (tools/export.py traces it).
        self.inference_model = inference_model(self.model, cfg)
        # The precision evaluation uses too: SOLVER.AMP (bf16 autocast on CPU runs the fused
        # convolutions in bf16, ~4x faster on a CPU with AMX).
        amp = cfg.SOLVER.AMP
        self._autocast = autocast_factory(self.device.type, amp.ENABLED, amp.DTYPE)
        self.class_names, self.category_ids = resolve_class_names(cfg, ckpt.get("extra"))
        self.transform = build_det_transforms(
            cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, 0.0, is_train=False
        )
        # TEST.AUG.ENABLED: answer with the fused detections of the test-time views (one
        # forward pass per view; the images go in unresized, each view resizes them).
        self.tta = (
            DetectorWithTTA.from_config(self.inference_model, cfg, fused_thresh)
            if cfg.TEST.AUG.ENABLED
            else None
        )
        if self.tta is not None and self.batch_size > 1:
            logger.info("TEST.AUG: each image runs alone, one pass per view (%d views), not in "
                        "batches of %d; TEST.AUG.ENABLED False batches", len(self.tta.views),
                        self.batch_size)  # fmt: skip

    def preprocess(self, image: Any) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """``(uint8[3, H', W'] resized RGB tensor, (H, W) original size)``; with test-time
        augmentation the tensor keeps the original size (each view resizes it)."""
        source = str(image) if isinstance(image, (str, os.PathLike)) else "image"
        rgb = to_rgb_uint8(image, source, self.cfg.INPUT.MAX_IMAGE_PIXELS)
        if self.tta is not None:
            tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
            return tensor, (int(rgb.shape[0]), int(rgb.shape[1]))
        resized, _, _ = self.transform(rgb, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
        return tensor, (int(rgb.shape[0]), int(rgb.shape[1]))

    def __call__(self, image: Any) -> Union[Detections, List[Detections]]:
        """Detect objects in one image (path, PIL image or array; see :func:`to_rgb_uint8`),
        or in each image of a list or tuple (:meth:`predict_batch`)."""
        if isinstance(image, (list, tuple)):
            return self.predict_batch(image)
        return self.predict_batch([image])[0]

    @torch.inference_mode()
    def predict_batch(
        self, images: Sequence[Any], batch_size: Optional[int] = None
    ) -> List[Detections]:
        """Detections for each of ``images``, in order.

        Consecutive windows of ``batch_size`` (default ``self.batch_size``) images are read and
        resized; each window runs as one forward pass per padded input size it contains.
        """
        batch_size = batch_size or self.batch_size
        divisor = max(1, int(getattr(self.model, "size_divisibility", 1)))
        out: List[Detections] = []
        if self.tta is not None:  # one image a pass: views of other images never pad it
            for im in images:
                tensor, size = self.preprocess(im)
                with self._autocast():
                    det = self.tta([{"image": tensor, "orig_size": size}])[0]
                out.append(self._detections(det, size))
            return out
        for start in range(0, len(images), batch_size):
            inputs = [self.preprocess(im) for im in images[start : start + batch_size]]
            groups: Dict[Tuple[int, int], List[int]] = {}
            for i, (tensor, _) in enumerate(inputs):
                h, w = tensor.shape[-2:]
                key = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
                groups.setdefault(key, []).append(i)
            window: List[Optional[Detections]] = [None] * len(inputs)
            for members in groups.values():
                batch = [{"image": inputs[i][0], "orig_size": inputs[i][1]} for i in members]
                with self._autocast():
                    dets = self.inference_model(batch)
                for i, det in zip(members, dets):
                    window[i] = self._detections(det, inputs[i][1])
            out += [d for d in window if d is not None]
        return out

    def _detections(self, det: Dict[str, torch.Tensor], size: Tuple[int, int]) -> Detections:
        return Detections(
            boxes=det["boxes"].float().cpu().numpy().reshape(-1, 4),
            scores=det["scores"].float().cpu().numpy(),
            labels=det["labels"].cpu().numpy().astype(np.int64),
            class_names=self.class_names,
            image_size=size,
        )
