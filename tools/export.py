"""Export a trained detector to ONNX, TorchScript and/or OpenVINO, and check it against PyTorch.

    python tools/export.py --weights output/demo/det/model_final.pth --output export/shapes_det
    python tools/export.py --config configs/coco_r101.yaml --weights model.pth \\
        --output export/r101 --format onnx --size 800 1088 --fixed
    python tools/export.py --weights output/demo/det/model_final.pth --output export/shapes_det \\
        --format openvino

Writes ``<output>.onnx``, ``<output>.torchscript.pt`` and/or ``<output>.xml`` + ``<output>.bin``
(OpenVINO, converted from the ONNX export; needs ``pip install openvino``; ``--format all``
includes it only when openvino is installed) plus ``<output>.json`` (what the
model expects and returns, and the class names). The exported model takes ONE image
``image: float32[1, 3, H, W]``, RGB, 0-255, already resized like the config's test transform
(shorter side INPUT.MIN_SIZE_TEST, longer side at most INPUT.MAX_SIZE_TEST); it normalises and
pads internally and returns ``boxes float32[D, 4]`` (xyxy in the input's pixels: divide by the
resize factor for the original image), ``scores float32[D]`` and ``labels int64[D]`` (0..K-1).

ONNX input H and W are dynamic unless ``--fixed``; the TorchScript trace reads sizes from the
input as well. Export traces the model's own forward (``resdet.export.adapter``); after
exporting, each is run (ONNX in onnxruntime, OpenVINO in OpenVINO fp32) on the example size and
on a second size and its detections compared with the PyTorch model's own (exit status 1 on a
mismatch).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import torch

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.utils.cli import tool_entry, tool_parser


@torch.no_grad()
def export_and_check(fmt: str, model, reference, args, example, other, done=()) -> bool:
    """Export ``model`` in ``fmt``; unless ``--no-check``, compare its detections with
    ``reference`` (the PyTorch model's own) at the example size and at another size. ``done``:
    the formats already exported in this run."""
    from resdet.export.onnx import compare_detections, export_onnx, export_torchscript, run_onnx

    t0 = time.perf_counter()
    if fmt == "onnx":
        path = args.output + ".onnx"
        export_onnx(model, path, example, dynamic=not args.fixed, opset=args.opset)
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run(x):
            return run_onnx(path, x, session)
    elif fmt == "openvino":
        from resdet.export.openvino import compile_openvino, export_openvino, run_openvino

        path = args.output + ".xml"
        # Converted from the ONNX file this run wrote, if it wrote one.
        onnx_path = args.output + ".onnx" if "onnx" in done else None
        export_openvino(model, path, example, dynamic=not args.fixed, opset=args.opset,
                        onnx_path=onnx_path)  # fmt: skip
        compiled = []  # compiled on the first check run (not at all with --no-check)

        def run(x):
            compiled[:] = compiled or [compile_openvino(path)]
            return run_openvino(path, x, compiled[0])
    else:
        path = args.output + ".torchscript.pt"
        run = export_torchscript(model, path, example)
    size_mb = os.path.getsize(path) / 2**20
    if fmt == "openvino":
        size_mb += os.path.getsize(path[: -len(".xml")] + ".bin") / 2**20
    print(f"wrote {path} ({size_mb:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    if args.no_check:
        return True
    ok = True
    # A fixed-size ONNX (or OpenVINO) model only accepts the example's size.
    for x in [example] if (fmt != "torchscript" and args.fixed) else [example, other]:
        t0 = time.perf_counter()
        got = run(x)
        seconds = time.perf_counter() - t0
        match = compare_detections(reference(x), got)
        ok &= match.ok
        print(f"  {fmt} at {x.shape[2]}x{x.shape[3]}: {match} ({seconds:.2f} s, first call)")
    return ok


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", default=None, help="YAML config (default: the checkpoint's)")
    parser.add_argument("--weights", required=True, help="detector checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="path prefix of the exported files")
    parser.add_argument(
        "--format", choices=("onnx", "torchscript", "openvino", "all"), default="all",
        help="all: onnx, torchscript, and openvino when it is installed",
    )  # fmt: skip
    parser.add_argument(
        "--size", nargs=2, type=int, metavar=("H", "W"),
        help="example input size (default: a 3:4 image resized by the config's test transform)",
    )  # fmt: skip
    parser.add_argument(
        "--fixed", action="store_true", help="ONNX / OpenVINO input size fixed to --size"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 16, default 17)")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison run")
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = parser.parse_intermixed_args(argv)

    from resdet.config import ConfigError
    from resdet.data.det_transforms import resize_scale
    from resdet.export.onnx import example_image, model_detections
    from resdet.export.openvino import openvino_available
    from resdet.predictor import Predictor

    try:
        predictor = Predictor(args.config, args.weights, device="cpu", overrides=args.opts)
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg, model = predictor.cfg, predictor.model
    if args.size:
        size = tuple(args.size)
    else:
        s = resize_scale(480, 640, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        size = (round(480 * s), round(640 * s))
    example = example_image(*size, seed=0)
    # A second, differently shaped input checks that sizes were not frozen into the graph.
    other = example_image(max(32, size[0] * 3 // 4), max(32, size[1] * 5 // 6), seed=1)
    reference = functools.partial(model_detections, model)  # the model itself, eager
    formats = ["onnx", "torchscript"] if args.format == "all" else [args.format]
    if args.format == "all":
        if openvino_available():
            formats.append("openvino")
        else:
            print("skipping the openvino format: openvino is not installed (pip install openvino)")
    ok = True
    for i, fmt in enumerate(formats):
        try:
            ok &= export_and_check(fmt, model, reference, args, example, other, formats[:i])
        except (ImportError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    meta = {
        "input": {
            "name": "image",
            "layout": "float32[1, 3, H, W], RGB, 0-255",
            "resize": {"min_size": cfg.INPUT.MIN_SIZE_TEST, "max_size": cfg.INPUT.MAX_SIZE_TEST},
            "dynamic": not args.fixed,
            "example_size": list(size),
        },
        "outputs": {
            "boxes": "float32[D, 4] xyxy in the input's pixels",
            "scores": "float32[D]",
            "labels": "int64[D] in 0..K-1",
        },
        "class_names": predictor.class_names,
        "score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "weights": os.path.abspath(args.weights),
    }
    with open(args.output + ".json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    if not ok:
        print("exported model's detections differ from PyTorch's (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
