"""resdet: ResNet backbones, classification pretraining and Faster R-CNN detection."""

import os

# albumentations asks PyPI for a newer version on import; resdet runs offline and silent.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy: `import resdet` stays light (no torch); `resdet.Predictor` imports the model code.
    if name == "Predictor":
        from resdet.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'resdet' has no attribute {name!r}")
