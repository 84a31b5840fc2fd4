"""OpenVINO export of a Faster R-CNN, converted from resdet's ONNX export, and running it.

The OpenVINO model is the ONNX export (:func:`resdet.export.onnx.export_onnx`: the model's own
forward traced through :class:`~resdet.export.adapter.TracingAdapter`) read by OpenVINO's ONNX
frontend (``openvino.convert_model``) and written as ``<name>.xml`` (graph) + ``<name>.bin``
(weights). Same input and outputs as the ONNX model: ``image float32[1, 3, H, W]`` (RGB 0-255,
resized like the config's test transform) in; ``boxes float32[D, 4]`` (xyxy, input pixels),
``scores float32[D]``, ``labels int64[D]`` out. H and W stay dynamic unless the ONNX export
was fixed-size.

The weights are saved in fp32 (``save_model(..., compress_to_fp16=False)``): OpenVINO's default
halves them to fp16, which moves scores by ~1e-3 and fails the parity check with the model. At
run time :func:`compile_openvino` asks the CPU for fp32 arithmetic (``INFERENCE_PRECISION_HINT``
``f32``; OpenVINO would otherwise pick bf16 on CPUs that have it).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Optional

import numpy as np
import torch

from resdet.export.onnx import Dets, export_onnx

logger = logging.getLogger(__name__)

__all__ = [
    "compile_openvino",
    "export_openvino",
    "import_openvino",
    "openvino_available",
    "run_openvino",
]

INSTALL_HINT = "pip install openvino (or pip install 'resdet[openvino]')"


def import_openvino() -> Any:
    """The ``openvino`` module; ``ImportError`` saying how to install it when it is missing."""
    try:
        import openvino
    except ImportError as e:
        raise ImportError(
            f"OpenVINO export and runs need the openvino package: {INSTALL_HINT}"
        ) from e
    return openvino


def openvino_available() -> bool:
    """Whether ``openvino`` imports (``--format all`` exports to it only then)."""
    try:
        import_openvino()
    except ImportError:
        return False
    return True


def export_openvino(
    model: torch.nn.Module,
    path: str,
    example: torch.Tensor,
    dynamic: bool = True,
    opset: int = 17,
    onnx_path: Optional[str] = None,
) -> str:
    """Write ``model`` as an OpenVINO model ``path`` (``.xml``, its ``.bin`` beside it).

    Args:
        example: ``float32[1, 3, H, W]`` traced through the model (when exporting ONNX here).
        dynamic, opset: as :func:`~resdet.export.onnx.export_onnx`.
        onnx_path: an ONNX export of ``model`` made in this run, converted instead of exporting
            a fresh one into a temporary folder.

    Returns ``path``. Raises ``ImportError`` (how to install) when openvino is missing.
    """
    ov = import_openvino()
    if not path.endswith(".xml"):
        raise ValueError(f"{path}: an OpenVINO model path ends in .xml (its weights go to .bin)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        if onnx_path is None:
            onnx_path = os.path.join(tmpdir, "model.onnx")
            export_onnx(model, onnx_path, example, dynamic=dynamic, opset=opset)
        converted = ov.convert_model(onnx_path)
        ov.save_model(converted, path, compress_to_fp16=False)
    shape = converted.inputs[0].get_partial_shape()
    logger.info("wrote OpenVINO %s (input %s, fp32 weights)", path, shape)
    return path


def compile_openvino(path: str, threads: Optional[int] = None, precision: str = "f32") -> Any:
    """``path`` (``.xml`` or ``.onnx``) compiled for the CPU: ``threads`` inference threads
    (default: OpenVINO's choice), arithmetic in ``precision`` (``"f32"`` or ``"bf16"``), one
    stream and latency-oriented scheduling (one image at a time)."""
    ov = import_openvino()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such OpenVINO / ONNX model file")
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(path, "CPU", config)


def run_openvino(
    path: str, image: np.ndarray | torch.Tensor, compiled: Optional[Any] = None
) -> Dets:
    """Run an OpenVINO model on ``float32[1, 3, H, W]``; numpy ``(boxes, scores, labels)`` as
    :func:`~resdet.export.onnx.run_onnx` returns them. ``compiled``: a model from
    :func:`compile_openvino` (else ``path`` is compiled for this call)."""
    if compiled is None:
        compiled = compile_openvino(path)
    x = image.numpy() if isinstance(image, torch.Tensor) else image
    result = compiled({"image": np.ascontiguousarray(x, np.float32)})
    boxes, scores, labels = (result[out] for out in compiled.outputs)
    return boxes, scores, labels
