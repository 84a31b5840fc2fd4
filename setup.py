"""resdet: ResNet backbones and Faster R-CNN detection, after He et al. 2015."""

from setuptools import find_packages, setup

setup(
    name="resdet",
    version="0.1.0",
    description="ResNet backbones, classification pretraining and Faster R-CNN detection",
    # resdet is the library; resdet_apps the programs beside it (benchmark, demo), shipped too so
    # that tools/benchmark.py and tools/demo.py run against an installed copy.
    packages=find_packages(include=["resdet", "resdet.*", "resdet_apps", "resdet_apps.*"]),
    # The configs ship inside the package (resdet/configs links to configs/ in a checkout), so
    # load_config("coco_r50_fpn") and `--config configs/...` work from any folder once installed.
    package_data={"resdet": ["configs/*.yaml", "configs/*/*.yaml"]},
    python_requires=">=3.9",
    install_requires=[
        # Ranges admit the releases pinned on the build machines
        # (torch 2.14.1 / torchvision 0.29.1).
        "torch>=2.1,<2.15",
        "torchvision>=0.16,<0.30",
        "numpy",
        "pycocotools>=2.0.6",
        "opencv-python-headless>=4.6",
        "albumentations>=2.0",
        "pyyaml>=5.4",
        "tqdm>=4.60",
        "tensorboard>=2.10",
        "matplotlib>=3.5",
    ],
    extras_require={
        "dev": ["pytest>=7", "ruff>=0.4", "setuptools>=61"],  # setuptools: the wheel test
        "onnx": ["onnx", "onnxruntime"],
        # OpenVINO export converts resdet's ONNX export (so it needs onnx too).
        "openvino": ["onnx", "openvino>=2026.0"],
    },
)
