"""Resumable steps for the demo (:mod:`resdet_apps.demo`) and the degradation experiment
(:mod:`resdet_apps.degradation`): skip what is done, time what runs, run one chain of steps in
a second process, and set up and tear down a run of steps (:class:`StepRun`).

A step owns a folder. ``demo_settings.json`` in it records the settings the step started
with; a file the step writes last (``model_final.pth``, ``eval_results.json``) marks it done.
Same settings and the marker present: skipped. Same settings, no marker: resumed (training
continues from ``last_checkpoint``). Other settings: the folder is cleared and the step runs
again, so outputs never mix two configurations.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import shutil
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar

from resdet.config.load import ConfigError
from resdet.data.catalog import datasets_root
from resdet.data.shapes import generate_shapes, validate_shapes
from resdet.utils.logging import close_logging, setup_logging

logger = logging.getLogger(__name__)

__all__ = [
    "Background",
    "StepRun",
    "StepTimer",
    "prepare_step",
    "schedule_and_data_root",
    "shapes_step",
]

S = TypeVar("S")


def schedule_and_data_root(
    schedules: Mapping[str, S], name: str, data_root: str, default_root: str
) -> Tuple[S, str]:
    """The schedule called ``name`` and the data folder: ``data_root``, else
    ``<datasets root>/<default_root>`` (``_quick`` added for the quick schedule).

    Raises:
        ConfigError: no schedule of that name (the message lists them).
    """
    sch = schedules.get(name)
    if sch is None:
        raise ConfigError(f"unknown schedule '{name}'; use {sorted(schedules)}")
    folder = default_root + ("_quick" if name == "quick" else "")
    return sch, data_root or os.path.join(datasets_root(), folder)


def shapes_step(data_root: str, workers: int, **shape_args: Any) -> Callable[[], str]:
    """A step generating the shapes dataset into ``data_root`` unless it is already complete
    with these settings; it returns ``"ran"`` or ``"skipped"`` for the :class:`StepTimer`."""

    def data() -> str:
        fresh = not validate_shapes(data_root, **shape_args)
        generate_shapes(data_root, workers=workers, **shape_args)
        return "ran" if fresh else "skipped"

    return data


class StepTimer:
    """Wall time per step, kept in ``<output>/timings.json`` (when ``output`` is given) so a
    resumed demo reports the time each skipped step took when it ran."""

    def __init__(self, output: str | None) -> None:
        self.path = os.path.join(output, "timings.json") if output else None
        self.steps: Dict[str, Dict[str, Any]] = {}
        if self.path and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.steps = json.load(f)

    def run(self, name: str, fn: Callable[[], str]) -> None:
        """Run ``fn() -> status`` ("ran", "resumed" or "skipped") and record its wall time."""
        t0 = time.perf_counter()
        status = fn()
        seconds = time.perf_counter() - t0
        if status == "skipped" and name in self.steps:
            self.steps[name]["status"] = "done before"
        else:
            self.steps[name] = {"seconds": round(seconds, 1), "status": status}
        self.save()

    def save(self) -> None:
        if self.path:
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(self.steps, f, indent=2)


def _same_settings(stamp: str, settings: Dict[str, Any]) -> bool:
    with open(stamp, encoding="utf-8") as f:
        return json.load(f) == json.loads(json.dumps(settings))


def prepare_step(out: str, settings: Dict[str, Any], done_file: str) -> str:
    """``"skipped"`` when ``out`` holds a finished step with these settings; otherwise make
    ``out`` ready for a (resumed) run and return ``"ran"`` or ``"resumed"``.

    ``demo_settings.json`` records the settings a step started with. Different settings
    mean the old outputs describe another run: the folder is cleared and the step restarts.
    """
    stamp = os.path.join(out, "demo_settings.json")
    if os.path.isfile(stamp):
        if _same_settings(stamp, settings):
            if os.path.isfile(os.path.join(out, done_file)):
                return "skipped"
            return "resumed"
        logger.warning("%s was made with other settings: starting that step again", out)
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    with open(stamp, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)
    return "ran"


def _child_main(results: Any, fn: Callable[..., Any], *args: Any) -> None:
    try:
        results.put(("ok", fn(*args)))
    except BaseException as e:  # noqa: BLE001 -- every failure goes back to the parent
        results.put(("error", e))


class Background:
    """``fn(*args)`` in a spawned process (spawn, not fork: the parent holds torch threads,
    which fork can deadlock). Not daemonic, as its DataLoaders start worker processes.

    Args:
        fn: a module-level function (it is pickled by name); its return value and any
            exception it raises must pickle.
        name: what the process does, for error messages.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "background") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.results = ctx.Queue()
        self.proc = ctx.Process(target=_child_main, args=(self.results, fn, *args), daemon=False)
        self.proc.start()

    def result(self) -> Any:
        """Wait for the process: its return value, or the exception it raised, raised here."""
        while True:
            try:
                kind, value = self.results.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.proc.is_alive() and self.results.empty():
                    raise RuntimeError(
                        f"{self.name}: the process died (exit code {self.proc.exitcode})"
                    ) from None
        self.proc.join()
        if kind == "error":
            raise value
        return value

    def stop(self) -> None:
        """End the process if it still runs (the demo failed or was interrupted)."""
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join()


class StepRun:
    """A run of steps into ``output``, as a context: on entry the folder exists, its ``log.txt``
    is open, the :attr:`timer` has the times recorded earlier and torch uses one intra-op
    thread (the ops of these small networks gain little from a second OpenMP thread, and a
    spinning OpenMP team on a CPU shared with other work measured 5-10x slower than one). On
    exit, however the run ends, the :attr:`background` process (if one is still set) is
    stopped, the thread count restored and the log closed.
    """

    def __init__(self, output: str) -> None:
        self.output = output
        self.background: Optional[Background] = None
        self._threads = 0

    def __enter__(self) -> StepRun:
        import torch

        os.makedirs(self.output, exist_ok=True)
        setup_logging(self.output)
        self.timer = StepTimer(self.output)
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        import torch

        if self.background is not None:
            self.background.stop()
            self.background = None
        torch.set_num_threads(self._threads)
        close_logging()
