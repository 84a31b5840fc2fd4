"""The command line shared by tools/train_cls.py, train_det.py and eval_det.py.

``--config FILE [--resume] [--eval-only] [--weights W] [--threads N] [KEY VALUE ...]`` -> load
the config (``--threads N`` is ``ACCEL.THREADS N``) -> the task's ``run(cfg, resume, eval_only,
weights)``. Flags may come anywhere, before, between or after the ``KEY VALUE``
overrides (``... OUTPUT_DIR out --resume``). Expected
failures (a bad config, bad data, a broken checkpoint, an unwritable output, a NaN loss) are
raised to the tool's :func:`resdet.utils.cli.tool_entry`, which prints one ``error:`` line
and exits with 2.
"""

from __future__ import annotations

import json
from typing import Callable, Dict, List, Optional

from resdet.config import Config, load_config
from resdet.engine.dist import destroy_distributed, is_main_process
from resdet.utils.cli import DEBUG_FLAG, add_threads_argument, threads_override, tool_parser

RunFn = Callable[..., Dict[str, float]]


def tool_main(
    doc: str, run: RunFn, argv: Optional[List[str]] = None, eval_only: bool = False
) -> int:
    """Parse ``argv``, run the task, print its final metrics as JSON on rank 0.

    Args:
        doc: the tool's module docstring (first line = description, rest = usage epilog).
        run: ``resdet.engine.classification.run`` or ``resdet.engine.detection.run``.
        eval_only: an evaluation tool: ``--weights`` is required and there is no training.
    """
    parser = tool_parser(doc, epilog=True)
    parser.add_argument("--config", required=True, help="YAML config (with _BASE_ chain)")
    parser.add_argument("--weights", default="", required=eval_only, help="checkpoint to use")
    if not eval_only:
        parser.add_argument("--resume", action="store_true", help="continue from last_checkpoint")
        parser.add_argument("--eval-only", action="store_true", help="evaluate and exit")
    add_threads_argument(parser)
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="show the traceback of an error (or RESDET_DEBUG=1)"
    )
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides (flags may follow)")
    args = parser.parse_intermixed_args(argv)
    main_process = True
    try:
        cfg: Config = load_config(args.config, list(args.opts) + threads_override(args.threads))
        results = run(
            cfg,
            resume=getattr(args, "resume", False),
            eval_only=eval_only or args.eval_only,
            weights=args.weights,
        )
    finally:
        main_process = is_main_process()
        destroy_distributed()
    if results and main_process:
        print(json.dumps(results, indent=2 if eval_only else None))
    return 0
