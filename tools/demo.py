"""The demo: classification pretraining -> Faster R-CNN on the embedded shapes dataset.

    python tools/demo.py                      # what `make demo` runs (iterations fitted to 15 min)
    python tools/demo.py --schedule default   # fp32, 2,000 iterations, whatever the CPU
    python tools/demo.py --quick              # a ~1 minute smoke run of every step
    python tools/demo.py --long               # a longer schedule aimed at the accuracy targets
    python tools/demo.py --det-opts SOLVER.MAX_ITER 600 --cls-opts SOLVER.MAX_ITER 400

Steps: generate the data, pretrain the classifier, fine-tune the detector from it, train the
same detector from scratch, evaluate both (COCO and VOC), write REPORT.md and the PNGs into
--output. Re-running resumes: finished steps are skipped, an interrupted one continues from
its last checkpoint. Nothing is downloaded.
"""

from __future__ import annotations

import os
import sys

try:  # resdet_apps first: the programs and the library then come from one place
    import resdet_apps  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.utils.cli import tool_entry, tool_parser
from resdet_apps.demo import SCHEDULES, DemoOptions, default_schedule, run_demo


def _print_summary(s: dict) -> None:
    def pct(x: object) -> str:
        return f"{100 * x:5.1f}" if isinstance(x, (int, float)) else "    -"

    fitted = ", detector iterations fitted to this CPU" if s.get("fitted") else ""
    print(
        f"\ndemo ({s['schedule']}, {s['det_iters']} detector iterations{fitted}) "
        f"finished in {s['wall_seconds'] / 60:.1f} min"
    )
    for name, info in s["steps"].items():
        print(f"  {name:<13} {info.get('seconds', 0):7.1f} s  {info.get('status', '')}")
    err = s["classifier"].get("top1_err")
    print(f"classifier val top-1 error: {pct(err).strip()}%")
    runs = [r for r in ("pretrained", "scratch") if r in s]
    print("detection (%)        " + "".join(f"{r:>12}" for r in runs))
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "VOC07_mAP", "VOC_area_mAP"):
        print(f"  {key:<18} " + "".join(f"{pct(s[r].get(key)):>12}" for r in runs))
    if all("tta" in s[r] for r in runs):  # the config's test-time augmentation (TEST.AUG)
        for key in ("AP", "AP50", "AP75", "VOC07_mAP"):
            print(
                f"  {key + ', TTA':<18} "
                + "".join(f"{pct(s[r]['tta'].get(key)):>12}" for r in runs)
            )
    print(f"report: {s['report']}")


@tool_entry
def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny smoke run (about a minute)")
    mode.add_argument("--long", action="store_true", help="longer schedule for the AP targets")
    mode.add_argument(
        "--schedule",
        choices=sorted(SCHEDULES),
        help="a schedule by name (default: 'bf16' where a timed one-thread bf16 training step "
        "of the demo's detector is >= 10%% faster than fp32 on this CPU, else 'default'; "
        "resdet.accel.bf16_pays)",
    )
    parser.add_argument(
        "--output", default="", help="output folder (default output/demo[_quick|_long])"
    )
    parser.add_argument("--data-root", default="", help="dataset folder (default datasets/shapes)")
    parser.add_argument("--cls-config", default="", help="classifier YAML")
    parser.add_argument("--det-config", default="", help="detector YAML")
    parser.add_argument("--cls-opts", nargs="*", default=[], help="classifier KEY VALUE ...")
    parser.add_argument("--det-opts", nargs="*", default=[], help="detector KEY VALUE ...")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch run")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="train the from-scratch detector after the others, not in a second process",
    )
    parser.add_argument("--workers", type=int, default=2, help="data generation processes")
    parser.add_argument("--num-vis", type=int, default=8, help="val images to draw")
    args = parser.parse_args(argv)
    schedule = (
        "quick"
        if args.quick
        else "long"
        if args.long
        else args.schedule or default_schedule(args.det_config)
    )
    suffix = "" if schedule in ("default", "bf16") else f"_{schedule}"
    opts = DemoOptions(
        output=args.output or f"output/demo{suffix}",
        schedule=schedule,
        data_root=args.data_root,
        cls_config=args.cls_config,
        det_config=args.det_config,
        cls_opts=args.cls_opts,
        det_opts=args.det_opts,
        scratch=not args.no_scratch,
        parallel=not args.sequential,
        workers=args.workers,
        num_vis=args.num_vis,
        # `make demo` (no schedule named, no iterations given): as many detector iterations
        # as fit its budget here
        fit=not (args.quick or args.long or args.schedule or "SOLVER.MAX_ITER" in args.det_opts),
    )
    summary = run_demo(opts)
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
