"""Programs built on resdet: the speed benchmark and the demo.

They stand beside the library, not inside it: ``resdet`` never imports ``resdet_apps``
(a test keeps it so). ``tools/benchmark.py`` and ``tools/demo.py`` are their command lines.

- :mod:`resdet_apps.benchmark`, :mod:`~resdet_apps.benchmark_modes`,
  :mod:`~resdet_apps.benchmark_report`: resdet's detectors against torchvision's, timed on the
  same images (``BENCHMARKS.md``), each model in a worker process of its own
  (:mod:`~resdet_apps.benchmark_workers`); :mod:`~resdet_apps.benchmark_peers` and
  :mod:`~resdet_apps.peer_worker`: resdet's ONNX export in onnxruntime and OpenVINO beside
  them, each runtime in its own process.
- :mod:`resdet_apps.demo`, :mod:`~resdet_apps.demo_steps`, :mod:`~resdet_apps.demo_report`:
  ``make demo``, classification pretraining -> Faster R-CNN on the embedded shapes data.
"""

import os as _os
import sys as _sys


def child_env() -> dict:
    """The environment for a Python child process that imports resdet and resdet_apps from
    where this process did (a checkout put on ``sys.path`` by a tool, or an install)."""
    return {**_os.environ, "PYTHONPATH": _os.pathsep.join(p for p in _sys.path if p)}
