"""Programs built on resdet: the speed benchmark and the demo.

They stand beside the library, not inside it: ``resdet`` never imports ``resdet_apps``
(a test keeps it so). ``tools/benchmark.py`` and ``tools/demo.py`` are their command lines.

- :mod:`resdet_apps.benchmark`, :mod:`~resdet_apps.benchmark_modes`,
  :mod:`~resdet_apps.benchmark_report`: resdet's detectors against torchvision's, timed on the
  same images (``BENCHMARKS.md``); :mod:`~resdet_apps.benchmark_peers` and
  :mod:`~resdet_apps.peer_worker`: resdet's ONNX export in onnxruntime and OpenVINO beside
  them, each runtime in its own process.
- :mod:`resdet_apps.demo`, :mod:`~resdet_apps.demo_steps`, :mod:`~resdet_apps.demo_report`:
  ``make demo``, classification pretraining -> Faster R-CNN on the embedded shapes data.
"""
