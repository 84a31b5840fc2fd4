"""resdet: ResNet backbones and Faster R-CNN detection, after He et al. 2015."""

from setuptools import find_packages, setup

setup(
    name="resdet",
    version="0.1.0",
    description="ResNet backbones, classification pretraining and Faster R-CNN detection",
    packages=find_packages(include=["resdet", "resdet.*"]),
    python_requires=">=3.9",
    install_requires=[
        # Ranges admit the releases pinned on the build machines (torch 2.14.1 / torchvision 0.29.1).
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
        "dev": ["pytest>=7", "ruff>=0.4"],
        "onnx": ["onnx", "onnxruntime"],
    },
)
