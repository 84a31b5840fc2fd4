"""The benchmark's worker processes: every model timed in a process of its own.

:class:`WorkerRunner` is the benchmark's side of a worker (start it, ask it for one unit of
work, read its JSON answer, close it); the worker's side is
:func:`resdet_apps.peer_worker.answer_loop`. Two kinds: the runtime peers
(:class:`~resdet_apps.benchmark_peers.PeerRunner`, onnxruntime and OpenVINO running resdet's
export, in a process that does not import torch) and the native models (:class:`NativeRunner`,
a resdet or torchvision detector built from the parent's calibrated weights by
:func:`native_worker`, ``python -m resdet_apps.benchmark_workers --native-worker JOB``).
:func:`measure_memory` is a native worker asked for its first unit's peak only (the
benchmark's ``--in-process`` mode).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from resdet_apps import child_env
from resdet_apps.benchmark import ModelSpec, Runner, build_base_model, make_inputs
from resdet_apps.peer_worker import answer_loop, rss_mb

logger = logging.getLogger(__name__)


class WorkerRunner:
    """A benchmark model in a worker process of its own (:func:`resdet_apps.peer_worker.answer_loop`
    on the other side); calling it runs one unit of work there and returns the worker's
    ``(wall, cpu)`` seconds, the form :func:`time_alternating` takes from a runner that times
    itself. ``counts`` (proposals, detections, loss) and ``peak_mb`` are the latest answer's."""

    def __init__(self, name: str, cmd: List[str]) -> None:
        self.name = name
        self.counts: Dict[str, Any] = {}
        self.answer: Dict[str, Any] = {}  # the latest unit's
        # stderr to a file: a chatty library must not fill a pipe nobody reads and stall.
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=child_env())  # fmt: skip
        try:
            self.ready = self._answer()
        except BaseException:  # a failed start or Ctrl-C while it loads: no worker left behind
            self.proc.kill()
            self.close()
            raise
        self.load_s, self.rss_mb = self.ready["load_s"], self.ready["rss_mb"]

    def _answer(self) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        while line and not line.startswith("{"):  # printed by a library, not an answer
            logger.debug("%s worker printed: %s", self.name, line.rstrip())
            line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            tail = self.stderr.read().strip().splitlines()
            raise RuntimeError(f"{self.name} worker exited ({self.proc.returncode}): "
                               + " | ".join(tail[-3:]))  # fmt: skip
        try:
            answer = json.loads(line)
        except json.JSONDecodeError as e:
            raise RuntimeError(f"{self.name} worker answered {line.strip()[:200]!r}: {e}") from e
        if "error" in answer:
            self.close()
            raise RuntimeError(f"{self.name} worker failed: {answer['error']}")
        return answer

    def __call__(self) -> Tuple[float, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        answer = self.answer = self._answer()
        self.counts.update(answer["counts"])
        return answer["wall"], answer["cpu"]

    @staticmethod
    def memory_row(peak_mb: float, before_mb: float) -> Dict[str, Any]:
        """A table's memory entry: the peak, the RSS before the work, and the work's part."""
        return {"peak_mb": peak_mb, "before_mb": before_mb, "work_mb": peak_mb - before_mb}

    @property
    def peak_mb(self) -> float:
        """The worker's peak resident MB so far (as of its latest answer)."""
        return self.answer.get("peak_mb", float("nan"))

    def close(self) -> None:
        if self.stderr.closed:
            return
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def _job_runner(job: Dict[str, Any]) -> Runner:
    """The :class:`Runner` a worker's job describes: the spec's model built, the parent's
    calibrated weights loaded, prepared for the job's mode."""
    torch.set_num_threads(job["threads"])
    size = tuple(job["size"])
    spec = ModelSpec.parse(job["spec"])
    model = build_base_model(spec, size, job["seed"])
    model.load_state_dict(torch.load(job["state"], weights_only=True))
    return Runner(spec, model, job["mode"], make_inputs(size, job["batch"], job["seed"]))


def native_worker(job_file: str) -> int:
    """Subprocess side of :class:`NativeRunner`: build the job's runner, then run one unit of
    work per ``run`` line (:func:`resdet_apps.peer_worker.answer_loop`)."""
    with open(job_file) as f:
        job = json.load(f)

    def load() -> Tuple[Dict[str, Any], Callable[[], Dict[str, Any]]]:
        runner = _job_runner(job)
        before = rss_mb("VmRSS")
        t0 = time.perf_counter()
        runner()  # the first unit: its peak is the memory figure, its time a compile's
        info = {"first_s": time.perf_counter() - t0, "first_peak_mb": rss_mb("VmHWM"),
                "before_mb": before}  # fmt: skip
        for _ in range(job.get("settle", 0)):
            runner()

        def run() -> Dict[str, Any]:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            runner()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            return {"faults": faults, "counts": runner.counts}

        return info, run

    return answer_loop(job["spec"], load)


class NativeRunner(WorkerRunner):
    """A resdet or torchvision model timed in a process of its own (:func:`native_worker`).

    Why: on CPU a large tensor costs page faults on every allocation, and how many depends on
    what the process allocated before (glibc's mmap threshold moves with the blocks freed).
    Timed in one process, a model's speed depended on the models beside it: torchvision's
    R50-FPN took 2.65 s alone and 3.63 s among six resdet variants (AMX Xeon). In a process
    of its own each model runs as a user's program would. The worker runs its first unit of
    work before it reports ready (its peak is the memory figure, what :func:`measure_memory`'s
    fresh process measures), then ``SETTLE_UNITS`` more: a new process takes a few units to
    settle (glibc raises its mmap threshold as blocks are freed; torchvision's first three
    inferences in a worker took 5.0-5.5, 3.1 and 2.8 s). ``faults`` holds the minor page
    faults of each timed unit.
    """

    def __init__(self, spec: ModelSpec, job_file: str) -> None:
        cmd = [sys.executable, "-m", "resdet_apps.benchmark_workers", "--native-worker", job_file]
        self.faults: List[int] = []
        super().__init__(spec.name, cmd)

    def __call__(self) -> Tuple[float, float]:
        wall_cpu = super().__call__()
        self.faults.append(self.answer["faults"])
        return wall_cpu

    def memory(self) -> Dict[str, Any]:
        """Peak RSS of the worker's first unit of work, the form :func:`measure_memory` gives."""
        return self.memory_row(self.ready["first_peak_mb"], self.ready["before_mb"])


# Untimed units a native worker runs after its first one, before the benchmark's own warm-up
# round (NativeRunner).
SETTLE_UNITS = 2


def write_job(
    spec: ModelSpec, model: nn.Module, mode: str, size: Tuple[int, int], batch: int,
    threads: int, seed: int, tmpdir: str, settle: int = 0,
) -> str:  # fmt: skip
    """The job file a worker builds ``spec``'s runner from (``model``'s weights saved beside it,
    once per base model)."""
    state = os.path.join(tmpdir, f"{spec.base}.pt")
    if not os.path.exists(state):
        torch.save(model.state_dict(), state)
    job = os.path.join(tmpdir, f"job-{mode}-{spec.name}.json")
    with open(job, "w") as f:
        json.dump({"spec": spec.name, "mode": mode, "size": list(size), "batch": batch,
                   "threads": threads, "seed": seed, "state": state, "settle": settle},
                  f)  # fmt: skip
    return job


def measure_memory(
    spec: ModelSpec, model: nn.Module, mode: str, size: Tuple[int, int], batch: int,
    threads: int, seed: int, tmpdir: str,
) -> Dict[str, Any]:  # fmt: skip
    """Peak RSS of a fresh process doing one unit of ``mode`` work with ``model``'s weights."""
    job = write_job(spec, model, mode, size, batch, threads, seed, tmpdir)
    try:
        worker = NativeRunner(spec, job)  # reports ready after its first unit of work
    except RuntimeError as e:
        return {"error": f"memory subprocess failed: {e}"}
    worker.close()
    return worker.memory()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--native-worker":
    sys.exit(native_worker(sys.argv[2]))
