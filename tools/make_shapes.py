"""Generate the embedded shapes dataset (COCO json, VOC xml, classification crops).

    python tools/make_shapes.py --root datasets/shapes --num-train 1500 --num-val 300 --seed 0

Nothing is rewritten when ``root`` already holds a complete generation with the same
arguments (see ``resdet.data.shapes.generate_shapes``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

try:
    import resdet  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.data.shapes import generate_shapes, shapes_paths
from resdet.utils.cli import tool_entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default="datasets/shapes", help="output folder")
    p.add_argument("--num-train", type=int, default=1500)
    p.add_argument("--num-val", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=160, help="smallest image side (pixels)")
    p.add_argument("--max-size", type=int, default=320, help="largest image side (pixels)")
    p.add_argument("--no-crops", action="store_true", help="skip the classification crops")
    p.add_argument("--crop-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="rendering processes (1: no pool)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


@tool_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.time()
    meta = generate_shapes(
        args.root,
        num_train=args.num_train,
        num_val=args.num_val,
        seed=args.seed,
        min_size=args.min_size,
        max_size=args.max_size,
        crops=not args.no_crops,
        crop_size=args.crop_size,
        progress=not args.quiet,
        workers=args.workers,
    )
    print(f"shapes dataset in {args.root} ({time.time() - start:.1f} s)")
    print(
        json.dumps(
            {
                s: {k: c[k] for k in ("images", "objects", "areas")}
                for s, c in meta["counts"].items()
            },
            indent=1,
        )
    )
    for key, path in shapes_paths(args.root).items():
        print(f"  {key:13s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
