"""Show which CPU fast paths resdet takes for a model on this machine, and the times behind it.

    python tools/fast_paths.py --config configs/coco_r50_fpn.yaml
    python tools/fast_paths.py --config configs/shapes_r18_fpn.yaml --threads 1 --remeasure

Times each candidate path (training: NCHW, channels_last, Winograd, bf16 where the CPU computes
it natively; inference: fused, fused + Winograd, bf16) on the model's backbone, or reads them
from the cache (``resdet.accel.measure``), and prints what ``ACCEL.DECIDE`` then chooses.
Training, evaluation and the Predictor make the same choice on their own.
"""

from __future__ import annotations

import json
import os
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.accel import fast_path_report, set_threads
from resdet.accel.measure import cache_path, machine_key
from resdet.config import load_config
from resdet.modeling.detection.build import build_detector
from resdet.utils.cli import add_threads_argument, threads_override, tool_entry, tool_parser


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", required=True, help="detector YAML config")
    add_threads_argument(parser)
    parser.add_argument("--remeasure", action="store_true", help="time again, replace the cache")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.opts + threads_override(args.threads))
    set_threads(cfg.ACCEL.THREADS)
    cfg.MODEL.BACKBONE.PRETRAINED = ""  # the speed of random weights is the speed of any
    report = fast_path_report(build_detector(cfg), cfg, remeasure=args.remeasure)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"machine: {machine_key()}")
    print(f"cache:   {cache_path()}")
    for kind, times in report["times"].items():
        row = ", ".join(f"{name} {t * 1000:.1f} ms" for name, t in times.items())
        print(f"{kind:<6} {row}")
    print(f"ACCEL.DECIDE {report['mode']}: training path {report['training_path']}, "
          f"inference Winograd {report['inference_winograd']}, "
          f"bf16 training {report['bf16_training']}, bf16 inference {report['bf16_inference']}"
          + ("" if report["native_bf16"] else " (no native bf16 here: not timed)"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
