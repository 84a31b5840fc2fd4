"""The classifier: a ResNet with global average pooling and an fc layer (the paper's Table 1)."""

from __future__ import annotations

from resdet.config.schema import Config
from resdet.modeling.backbone.resnet import ResNet, build_resnet


def build_classifier(cfg: Config) -> ResNet:
    """ResNet returning ``{"logits": Tensor[N, MODEL.NUM_CLASSES]}`` from normalized images.

    The same class, with the same parameter names, is the detector's backbone; only ``fc.*``
    is left over when a detector loads this model's checkpoint.
    """
    return build_resnet(
        cfg.MODEL.BACKBONE, num_classes=cfg.MODEL.NUM_CLASSES, out_features=["logits"]
    )
