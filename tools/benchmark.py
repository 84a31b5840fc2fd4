"""Time resdet's detectors against torchvision's Faster R-CNN on the same images.

    python tools/benchmark.py                                   # the full benchmark, 800x1333
    python tools/benchmark.py --size 320 320 --models tv_r18_fpn,r18_fpn,r18_fpn+fold \\
        --train-models tv_r18_fpn,r18_fpn --modes infer,train --repeats 3
    python tools/benchmark.py --modes infer --compile           # + torch.compile variants
    python tools/benchmark.py --modes infer --runtimes onnxruntime  # one runtime peer only
    python tools/benchmark.py --update-md BENCHMARKS.md         # refresh the kept table

Models are ``base[+mod...]``: bases r18_fpn, r50_fpn, r101_fpn, r18_c4, r50_c4 (300 test
proposals), r50_c4_1000, r101_c4 and torchvision's tv_r18_fpn, tv_r50_fpn, tv_r101_fpn;
modifiers fold (BN folded), cl (channels_last), bf16 (autocast), compile (torch.compile of
the backbone). Runtime peers (``--runtimes``, off with ``--no-runtimes``): r50_fpn's ONNX
export in onnxruntime and OpenVINO, each in its own process, alternating with the native
models. Writes ``benchmark.json`` and ``benchmark.md`` into ``--out``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys

try:  # resdet_apps first: the programs and the library then come from one place
    import resdet_apps  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resdet.utils.cli import tool_entry, tool_parser
from resdet.utils.machine import cpu_kind, cpu_vendor
from resdet_apps.benchmark_modes import MODES
from resdet_apps.benchmark_report import (
    BenchOptions,
    check_targets,
    render_markdown,
    run_benchmark,
    write_outputs,
)


def table_key(machine: dict) -> str:
    """Which table of the markdown a run's ``machine`` (``machine_info``) writes: its CPU kind
    (``resdet.utils.machine.CPU_KINDS``) and vendor, e.g. ``avx512_bf16-amd``. The vendor keeps
    apart CPUs with the same flags that behave differently (bf16 on an EPYC and on a Xeon)."""
    vendor = machine.get("vendor") or cpu_vendor(machine.get("cpu", ""))
    kind = cpu_kind(machine["isa"])
    return f"{kind}-{vendor}" if vendor else kind


def markers(key: str) -> tuple[str, str]:
    """The markers around the table of one kind of machine (:func:`table_key`)."""
    return f"<!-- benchmark:start cpu={key} -->", f"<!-- benchmark:end cpu={key} -->"


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def update_markdown(path: str, table: str, key: str) -> None:
    """Replace the table of machine kind ``key`` (:func:`table_key`) in ``path`` (between its
    markers; appended where absent): one table per kind of CPU measured, the others kept."""
    start, end = markers(key)
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@tool_entry
def main(argv: list[str] | None = None) -> int:
    d = BenchOptions()
    p = tool_parser(__doc__)
    p.add_argument("--size", nargs=2, type=int, default=list(d.size), metavar=("H", "W"))
    p.add_argument("--models", type=_list, default=d.models, help="comma-separated model names")
    p.add_argument("--train-models", type=_list, default=d.train_models)
    p.add_argument("--profile-models", type=_list, default=d.profile_models)
    p.add_argument("--modes", type=_list, default=d.modes, help=f"subset of {','.join(MODES)}")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed rounds first")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed rounds")
    p.add_argument("--train-repeats", type=int, default=0, help="timed training rounds "
                   "(default: --repeats)")  # fmt: skip
    p.add_argument("--batch", type=int, default=d.batch, help="images per training step")
    p.add_argument("--threads", type=int, default=d.threads, help="torch intra-op threads")
    p.add_argument("--workers", type=lambda s: [int(x) for x in _list(s)], default=d.workers,
                   help="data-loader worker counts to time, e.g. 0,2")  # fmt: skip
    p.add_argument("--runtimes", type=_list, default=d.runtimes,
                   help="runtime peers of the inference table, run on --runtime-model's ONNX "
                   "export, each in its own process; default: all, those not installed skipped "
                   "(openvino_bf16 only on CPUs with native bf16)")  # fmt: skip
    p.add_argument("--no-runtimes", action="store_true", help="no runtime peers")
    p.add_argument("--runtime-model", default=d.runtime_model,
                   help="the resdet model the runtime peers run (default r50_fpn)")  # fmt: skip
    p.add_argument("--in-process", action="store_true",
                   help="time every model in this process instead of each in a worker process of "
                   "its own (the default: page faults, about a tenth of a CPU detector's time, "
                   "depend on what else a process allocated)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="add torch.compile variants")
    p.add_argument("--no-memory", action="store_true",
                   help="no peak memory (each model's worker reports it; "
                   "with --in-process a fresh subprocess per model)")  # fmt: skip
    p.add_argument("--bf16-size", nargs=2, type=int, default=list(d.bf16_size))
    p.add_argument("--bf16-model", default=d.bf16_model)
    p.add_argument(
        "--bf16-train",
        action="store_true",
        help="bf16: also time a training step (minutes on CPUs without native bf16)",
    )
    p.add_argument(
        "--weights",
        default=d.weights,
        help="trained checkpoint for the bf16 AP change (e.g. the demo detector)",
    )
    p.add_argument("--ap-images", type=int, default=d.ap_images)
    p.add_argument(
        "--ap-dataset",
        default=d.ap_dataset,
        help="dataset for the bf16 AP change (default: the checkpoint's DATASETS.TEST)",
    )
    p.add_argument("--out", default="output/bench", help="directory for the JSON and markdown")
    p.add_argument(
        "--from-json",
        default="",
        help="no measuring: re-render a saved benchmark.json (its own command kept)",
    )
    p.add_argument("--update-md", default="", help="also put the table into this markdown file")
    args = p.parse_args(argv)
    if min(args.size) <= 0 or args.repeats < 1 or args.warmup < 0:
        p.error("--size must be positive, --repeats >= 1, --warmup >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    opts = BenchOptions(
        size=tuple(args.size), models=args.models, train_models=args.train_models,
        profile_models=args.profile_models, modes=args.modes, warmup=args.warmup,
        repeats=args.repeats, train_repeats=args.train_repeats, batch=args.batch,
        threads=args.threads, workers=args.workers,
        compile=args.compile, memory=not args.no_memory, bf16_size=tuple(args.bf16_size),
        bf16_model=args.bf16_model, bf16_train=args.bf16_train, weights=args.weights,
        ap_images=args.ap_images, ap_dataset=args.ap_dataset,
        runtimes=[] if args.no_runtimes else args.runtimes, runtime_model=args.runtime_model,
        isolate=not args.in_process,
    )  # fmt: skip
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            results = json.load(f)
        results["targets"] = check_targets(results)
        write_outputs(results, args.out, results.get("command", ""))
        if args.update_md:
            table = render_markdown(results, results.get("command", ""))
            update_markdown(args.update_md, table, table_key(results["machine"]))
        print(render_markdown(results, results.get("command", "")))
        return 0
    command = "python tools/benchmark.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    try:
        results = run_benchmark(opts, lambda r: write_outputs(r, args.out, command.strip()))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json_path, md_path = write_outputs(results, args.out, command.strip())
    print(render_markdown(results, command.strip()))
    print(f"wrote {json_path} and {md_path}")
    if args.update_md:
        table = render_markdown(results, command.strip())
        update_markdown(args.update_md, table, table_key(results["machine"]))
        print(f"updated {args.update_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
