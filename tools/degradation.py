"""The degradation problem, plain vs residual (He et al. 2015, Sec. 4.2, Fig. 6 and 7).

    python tools/degradation.py                  # plain-20/56 and ResNet-20/56 (~15 min, 2 cores)
    python tools/degradation.py --quick          # every step at toy size, in seconds
    python tools/degradation.py --depths 20 110  # a deeper pair
    python tools/degradation.py --opts SOLVER.MAX_ITER 640 SOLVER.STEPS "[320, 480]"

Generates the embedded shapes dataset with 32x32 object crops (unless present), trains the four
CIFAR-style nets on them with configs/shapes_degradation.yaml (two processes of one thread
each), measures each 3x3 layer's response, and writes report.md, fig6_training_curves.png,
fig7_layer_responses.png and summary.json into --output. Re-running resumes: finished steps
are skipped, an interrupted training continues from its last checkpoint.
"""

from __future__ import annotations

import os
import sys

try:  # resdet_apps first: the programs and the library then come from one place
    import resdet_apps  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.config.load import packaged_config_path
from resdet.utils.cli import tool_entry, tool_parser
from resdet_apps.degradation import SCHEDULES, DegradationOptions, run_degradation

CONFIG = packaged_config_path("shapes_degradation.yaml")


def _print_summary(s: dict) -> None:
    print(f"\ndegradation ({s['schedule']}) finished in {s['wall_seconds'] / 60:.1f} min")
    for name, info in s["steps"].items():
        print(f"  {name:<20} {info.get('seconds', 0):7.1f} s  {info.get('status', '')}")
    print("final error (%)        train     val")
    for name, run in s["runs"].items():
        val = "-" if run["val_err"] is None else f"{100 * run['val_err']:.1f}"
        print(f"  {name:<18} {100 * run['train_err']:7.1f} {val:>7}")
    for family, as_paper, not_as_paper in (
        ("plain", "trains worse, as in the paper", "does NOT train worse (unlike the paper)"),
        ("residual", "trains better, as in the paper", "does NOT train better (unlike the paper)"),
    ):
        c = s["finding"][family]
        print(
            f"{c['deep']} vs {c['shallow']}: {100 * c['deep_minus_shallow']:+.1f} points of "
            f"training error: the deeper net {as_paper if c['as_in_paper'] else not_as_paper}"
        )
    print(f"report: {s['report']}")


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="toy size: every step in seconds")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default=None)
    parser.add_argument("--config", default=CONFIG, help="recipe YAML (default: %(default)s)")
    parser.add_argument("--output", default="", help="default output/degradation[_quick]")
    parser.add_argument("--data-root", default="", help="default datasets/shapes_c32")
    parser.add_argument(
        "--depths", type=int, nargs=2, default=[20, 56], metavar=("SHALLOW", "DEEP")
    )
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides, all runs")
    parser.add_argument("--sequential", action="store_true", help="one process, not two")
    parser.add_argument("--workers", type=int, default=2, help="data generation processes")
    args = parser.parse_args(argv)
    schedule = "quick" if args.quick else args.schedule or "default"
    opts = DegradationOptions(
        config=args.config,
        output=args.output or ("output/degradation_quick" if schedule == "quick" else
                               "output/degradation"),
        schedule=schedule,
        depths=(args.depths[0], args.depths[1]),
        data_root=args.data_root,
        opts=args.opts,
        parallel=not args.sequential,
        workers=args.workers,
    )  # fmt: skip
    _print_summary(run_degradation(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
