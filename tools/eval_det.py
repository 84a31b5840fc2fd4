"""Evaluate a detector checkpoint on the config's test datasets (COCO AP and/or VOC AP).

    python tools/eval_det.py --config configs/coco_r101.yaml --weights W.pth
    python tools/eval_det.py --config configs/shapes_r18_fpn.yaml --weights W.pth \
        TEST.EVALUATORS "[coco, voc]"

    python tools/eval_det.py --config C --weights W.pth --report [--report-dir DIR] \
        [--report-score-thresh 0.5]

Results are printed and written to OUTPUT_DIR (eval_results.json, coco_metrics.json,
coco_per_class.md, coco_results.json, voc_metrics.json). --report also writes the evaluation
report (report.md, report.html, report.json, PNGs) into OUTPUT_DIR/report or --report-dir: the
same as the overrides TEST.REPORT True, TEST.REPORT_DIR DIR, TEST.REPORT_SCORE_THRESH T.
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.engine.detection import run
from resdet.engine.launch import tool_main
from resdet.utils.cli import tool_entry


def report_overrides(argv: list[str]) -> list[str]:
    """``--report``, ``--report-dir D`` and ``--report-score-thresh T`` as config overrides
    (appended after the other ``KEY VALUE`` pairs), the rest of ``argv`` unchanged."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--report-dir", default=None)
    parser.add_argument("--report-score-thresh", default=None)
    ours, rest = parser.parse_known_args(argv)
    extra = []
    if ours.report or ours.report_dir or ours.report_score_thresh:
        extra += ["TEST.REPORT", "True"]
    if ours.report_dir:
        extra += ["TEST.REPORT_DIR", ours.report_dir]
    if ours.report_score_thresh:
        extra += ["TEST.REPORT_SCORE_THRESH", ours.report_score_thresh]
    return rest + extra


@tool_entry
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return tool_main(__doc__, run, report_overrides(argv), eval_only=True)


if __name__ == "__main__":
    sys.exit(main())
