"""resdet: ResNet backbones, classification pretraining and Faster R-CNN detection."""

import os

# albumentations asks PyPI for a newer version on import; resdet runs offline and silent.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
