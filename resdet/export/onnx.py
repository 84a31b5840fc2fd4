"""TorchScript and ONNX export of a Faster R-CNN, and checks that the export computes the same.

Both exports trace the model's own forward through :class:`resdet.export.adapter.TracingAdapter`:
one image ``float32[1, 3, H, W]`` (RGB 0-255, already resized to the model's test size) in,
``(boxes float32[D, 4] xyxy in the input's pixels, scores float32[D], labels int64[D])`` out.
The model reads sizes from the input tensor in a way the tracer records, so both exports accept
other image sizes; ``dynamic=False`` pins the ONNX input to the example's size (some runtimes
optimise better). The check of an export compares it with the model itself
(:func:`model_detections`).

ONNX goes through the TorchScript-based exporter (``dynamo=False``): torchvision registers its
``nms``, ``roi_align`` and ``roi_pool`` symbolics there. Opset 16+ is needed for
``roi_align(aligned=True)`` (the C4 head); the default is 17. The batch size is 1.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from resdet.export.adapter import TracingAdapter, check_image
from resdet.modeling.detection.faster_rcnn import FasterRCNN

logger = logging.getLogger(__name__)

__all__ = [
    "DetectionMatch",
    "compare_detections",
    "example_image",
    "export_onnx",
    "export_torchscript",
    "model_detections",
    "run_onnx",
]

Dets = Tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [D, 4], scores [D], labels [D]
MIN_OPSET = 16  # roi_align(aligned=True) -> RoiAlign coordinate_transformation_mode half_pixel


def example_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A seeded ``float32[1, 3, H, W]`` image in 0-255 (smooth noise, so the RPN sees structure)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 16), max(2, width // 16), generator=g) * 255
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")


@torch.no_grad()
def model_detections(model: torch.nn.Module, image: torch.Tensor) -> Dets:
    """The eval-mode ``model``'s own detections for ``image`` ``float32[1, 3, H, W]`` (what an
    export of it must reproduce), as numpy ``(boxes [D, 4], scores [D], labels [D])``."""
    was_training = model.training
    try:
        boxes, scores, labels = TracingAdapter(model)(image)
    finally:
        model.train(was_training)
    return boxes.numpy(), scores.numpy(), labels.numpy()


def _trace_quietly(fn, *args, **kwargs):
    # The tracer warns about every Python bool/float it meets; the ones left in the model's
    # forward are constants of the model (strides, FPN level scales), not of the input size.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        # torchvision's clip_boxes_to_image copies the traced image size with torch.tensor().
        warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
        # torch.jit.trace and the TorchScript-based ONNX exporter are deprecated in torch 2.9+
        # but still the only path for torchvision's nms / roi_align (see the module docstring).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return fn(*args, **kwargs)


def export_torchscript(
    model: FasterRCNN, path: str, example: torch.Tensor
) -> torch.jit.ScriptModule:
    """Trace ``model`` on ``example`` (``float32[1, 3, H, W]``) and save it to ``path``.

    Load with ``torch.jit.load(path)``; call with an image of any size, same layout.
    """
    check_image(example)
    wrapper = TracingAdapter(model.cpu())
    with torch.no_grad():
        traced = _trace_quietly(torch.jit.trace, wrapper, (example,), check_trace=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    traced.save(path)
    logger.info("wrote TorchScript %s (traced at %s)", path, tuple(example.shape))
    return traced


def export_onnx(
    model: FasterRCNN,
    path: str,
    example: torch.Tensor,
    dynamic: bool = True,
    opset: int = 17,
) -> None:
    """Export ``model`` to ONNX at ``path`` and check the file with ``onnx.checker``.

    Args:
        example: ``float32[1, 3, H, W]`` traced through the model.
        dynamic: mark the input's H and W (and the number of detections) as dynamic.
        opset: ONNX opset, at least 16.

    Raises:
        ValueError: ``opset`` < 16 (the C4 head's ``roi_align(aligned=True)`` needs 16).
        ImportError: ``onnx`` is not installed (``pip install resdet[onnx]``).
    """
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is too old: RoIAlign with aligned=True (half-pixel boxes) needs "
            f"opset >= {MIN_OPSET}"
        )
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package: pip install 'resdet[onnx]'") from e
    check_image(example)
    wrapper = TracingAdapter(model.cpu())
    axes = {"boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"}}
    if dynamic:
        axes["image"] = {2: "height", 3: "width"}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        _trace_quietly(
            torch.onnx.export,
            wrapper,
            (example,),
            path,
            dynamo=False,  # torchvision's nms / roi_align symbolics live in this exporter
            opset_version=opset,
            input_names=["image"],
            output_names=["boxes", "scores", "labels"],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    onnx.checker.check_model(path)
    logger.info(
        "wrote ONNX %s (opset %d, %s input)", path, opset, "dynamic" if dynamic else "fixed"
    )


def run_onnx(path: str, image: np.ndarray | torch.Tensor, session: Optional[object] = None) -> Dets:
    """Run an exported model with onnxruntime on ``float32[1, 3, H, W]``; returns numpy dets."""
    if session is None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(
                "running ONNX models needs onnxruntime: pip install 'resdet[onnx]'"
            ) from e
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = image.numpy() if isinstance(image, torch.Tensor) else image
    boxes, scores, labels = session.run(None, {"image": np.ascontiguousarray(x, np.float32)})
    return boxes, scores, labels


@dataclass
class DetectionMatch:
    """How two detection sets for one image compare.

    ``max_box_diff`` is in pixels (largest coordinate difference between paired boxes),
    ``max_score_diff`` absolute; pairs are found per label by nearest box, so a different
    order of near-equal scores does not count as a difference.
    """

    count_a: int
    count_b: int
    max_box_diff: float
    max_score_diff: float
    ok: bool

    def __str__(self) -> str:
        return (
            f"{self.count_a} vs {self.count_b} detections, max box diff "
            f"{self.max_box_diff:.3g} px, max score diff {self.max_score_diff:.3g}: "
            f"{'match' if self.ok else 'MISMATCH'}"
        )


def compare_detections(
    a: Sequence, b: Sequence, box_tol: float = 0.5, score_tol: float = 1e-3
) -> DetectionMatch:
    """Pair ``a`` and ``b`` (each ``(boxes, scores, labels)``) and measure the differences.

    ``ok`` when the counts are equal and every pair agrees within ``box_tol`` pixels (or
    ``box_tol`` relative to the coordinate's size, whichever is larger) and ``score_tol``.
    """
    ba, sa, la = (np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t) for t in a)
    bb, sb, lb = (np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t) for t in b)
    box_diff, score_diff, ok = 0.0, 0.0, len(ba) == len(bb)
    used = np.zeros(len(bb), bool)
    for box, score, label in zip(ba, sa, la):
        cand = np.flatnonzero((lb == label) & ~used)
        if len(cand) == 0:
            ok = False
            continue
        d = np.abs(bb[cand] - box).max(axis=1)
        j = cand[int(np.argmin(d))]
        used[j] = True
        box_diff = max(box_diff, float(d.min()))
        score_diff = max(score_diff, float(abs(sb[j] - score)))
        tol = max(box_tol, 1e-3 * float(np.abs(box).max()))
        ok &= bool(d.min() <= tol and abs(sb[j] - score) <= score_tol)
    return DetectionMatch(len(ba), len(bb), box_diff, score_diff, bool(ok))
