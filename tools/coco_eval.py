"""Score a COCO results json against a COCO ground-truth json with pycocotools.

    python tools/coco_eval.py --gt instances_val2017.json --dt coco_results.json [--output DIR]
    python tools/coco_eval.py --gt G.json --dt D.json --report DIR [--image-root IMAGES]

Prints the summary APs and per-class APs (in percent); with ``--output`` also writes
``coco_metrics.json`` (fractions in [0, 1]) and ``coco_per_class.md`` there. ``--report DIR``
writes the evaluation report (report.md, report.html, report.json and PNGs; galleries drawn
when ``--image-root`` holds the gt's file names).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.evaluation.coco import evaluate_coco_files, format_coco_metrics
from resdet.utils.cli import tool_entry


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gt", required=True, help="COCO ground-truth json")
    parser.add_argument("--dt", required=True, help="COCO results json (list of detections)")
    parser.add_argument("--output", default=None, help="directory for metrics json + table")
    parser.add_argument("--verbose", action="store_true", help="show pycocotools' log")
    parser.add_argument("--report", default=None, metavar="DIR", help="write the report here")
    parser.add_argument("--image-root", default=None, help="image folder, for report galleries")
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=None,
        help="report: score threshold of the confusion matrix and galleries (default: best F1)",
    )
    parser.add_argument(
        "--allow-unknown-categories",
        action="store_true",
        help="results whose category_id is not in the ground truth: a warning with their "
        "count (they are left out of the score) instead of an error",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    metrics = evaluate_coco_files(
        args.gt, args.dt, args.output, allow_unknown_categories=args.allow_unknown_categories
    )
    if args.report:
        # Imported only when asked: it brings torch, which plain scoring does without.
        from resdet.evaluation.report_writer import report_from_files

        report_from_files(args.gt, args.dt, args.report, args.image_root, args.score_thresh)
    print(format_coco_metrics(metrics), end="")
    if args.report:
        print(f"report: {os.path.join(args.report, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
