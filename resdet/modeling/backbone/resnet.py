"""The ResNet family of He et al. 2015, residual and plain, for ImageNet and CIFAR.

One class serves classification and detection. Module names follow torchvision
(``conv1``, ``bn1``, ``layer1..layer4``, ``downsample``, ``fc``) so that a classification
checkpoint, a torchvision checkpoint and a detector's backbone share one set of keys:
loading a classifier into a detector leaves only ``fc.*`` over, with no renaming table.
Feature names follow the paper's stages: ``stem`` (conv1 + pool), ``res2``..``res5``
(conv2_x..conv5_x); ``logits`` is the classifier output.

Paper references:
- Table 1: ImageNet depths 18/34 (basic blocks) and 50/101/152 (bottleneck blocks).
- Sec. 4.2: CIFAR nets of depth 6n+2 with 16/32/64 filters and option A shortcuts.
- Sec. 3.3: shortcut options A (zero-padded identity), B (projection where dimensions
  change), C (all projections); plain nets are the same layers with no shortcut at all.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from resdet.layers.fuse import FusedConv2d
from resdet.layers.norm import freeze_batchnorm, get_norm
from resdet.modeling.backbone.base import Backbone, ShapeSpec
from resdet.modeling.backbone.blocks import BasicBlock, Bottleneck, ZeroPadShortcut, hooked

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "ZeroPadShortcut", "build_resnet"]

IMAGENET_DEPTHS: Dict[int, Tuple[str, Tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
SHORTCUTS = ("A", "B", "C")


class ResNet(Backbone):
    """ResNet / plain net returning a dict of the requested stage outputs.

    Args:
        depth: 18, 34, 50, 101, 152 (``stem="imagenet"``) or 6n+2 (``stem="cifar"``).
        stem: "imagenet" (7x7/2 conv + 3x3/2 max pool, stride 4) or "cifar" (3x3 conv,
            stride 1, three stages of 16/32/64 filters).
        plain: no shortcuts at all (the paper's plain baselines).
        shortcut: "A", "B" or "C" (Sec. 3.3); ignored when ``plain``.
        stride_in_1x1: MSRA-style stride placement in bottleneck blocks.
        norm: "BN", "FrozenBN" or "SyncBN".
        freeze_at: 0 trains everything; k >= 1 freezes the stem and the first k-1 residual
            stages (parameters fixed, their BN turned into FrozenBN), as detection fine-tuning
            does; 5 freezes the whole ImageNet trunk.
        out_features: names among ``stem``, ``res2``..``res5`` (``res4`` for CIFAR) and
            ``logits``; ``forward`` returns exactly these and stops after the deepest one.
        num_classes: size of the ``fc`` classifier; 0 builds no classifier.
        zero_init_residual: zero the last BN gamma of each residual block so that every block
            starts as the identity (Goyal et al. 2017); helps large-batch training.
        width: channels of the stem (64 ImageNet, 16 CIFAR).

    Input: ``float[N, 3, H, W]``, already normalized. Output: ``{name: Tensor}``, with
    ``logits`` of shape ``[N, num_classes]`` and stage features ``[N, C, H/s, W/s]``.
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        stem: str = "imagenet",
        plain: bool = False,
        shortcut: str = "B",
        stride_in_1x1: bool = False,
        norm: str = "BN",
        freeze_at: int = 0,
        out_features: Sequence[str] = ("logits",),
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        width: Optional[int] = None,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got '{shortcut}'")
        block, layers = self._layout(depth, stem)
        width = width or (16 if stem == "cifar" else 64)
        self.depth, self.stem_type, self.plain = depth, stem, plain
        kind: Optional[str] = None if plain else shortcut

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
            stride = 4
        else:
            self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
            stride = 1
        self.bn1 = get_norm(norm, width)
        self.relu: nn.Module = nn.ReLU(inplace=True)  # fuse() moves it into conv1
        self._shapes: Dict[str, ShapeSpec] = {"stem": ShapeSpec(width, stride)}

        in_ch = width
        self.stage_names: List[str] = []
        for i, num_blocks in enumerate(layers):
            stage_stride = 1 if i == 0 else 2
            blocks = []
            for b in range(num_blocks):
                blocks.append(
                    block(
                        in_ch,
                        width * 2**i,
                        stride=stage_stride if b == 0 else 1,
                        norm=norm,
                        shortcut=kind,
                        stride_in_1x1=stride_in_1x1,
                    )
                )
                in_ch = width * 2**i * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stride *= stage_stride
            self.stage_names.append(STAGE_NAMES[i])
            self._shapes[STAGE_NAMES[i]] = ShapeSpec(in_ch, stride)
        self.num_features = in_ch

        self.fc: Optional[nn.Linear] = nn.Linear(in_ch, num_classes) if num_classes > 0 else None
        valid = ["stem", *self.stage_names] + (["logits"] if self.fc is not None else [])
        for name in out_features:
            if name not in valid:
                raise ValueError(f"out_features: '{name}' is not one of {valid}")
        if not out_features:
            raise ValueError("out_features is empty")
        self.out_features = list(out_features)
        order = valid
        self._last = max(order.index(n) for n in self.out_features)

        self._init_weights(zero_init_residual)
        self.freeze(freeze_at)

    @staticmethod
    def _layout(depth: int, stem: str) -> Tuple[Type[nn.Module], Sequence[int]]:
        if stem == "imagenet":
            if depth not in IMAGENET_DEPTHS:
                raise ValueError(
                    f"ImageNet ResNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth}"
                )
            kind, layers = IMAGENET_DEPTHS[depth]
            return (BasicBlock if kind == "basic" else Bottleneck), layers
        if stem == "cifar":
            if depth < 8 or (depth - 2) % 6:
                raise ValueError(
                    f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}"
                )
            n = (depth - 2) // 6
            return BasicBlock, (n, n, n)
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got '{stem}'")

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 ("Delving deep into rectifiers") initialisation, as the paper uses.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.fc is not None:
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)
        if zero_init_residual and not self.plain:
            for stage in self.stages():
                for blk in stage:
                    norm = blk.last_norm()
                    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                        nn.init.zeros_(norm.weight)

    def stages(self) -> List[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.stage_names))]

    def stage(self, name: str) -> nn.Sequential:
        """The ``nn.Sequential`` of blocks for a stage name (``res2`` -> ``layer1``)."""
        if name not in self.stage_names:
            raise ValueError(f"this ResNet has no stage '{name}' (it has {self.stage_names})")
        return getattr(self, f"layer{STAGE_NAMES.index(name) + 1}")

    def stage_channels(self, name: str) -> int:
        """Output channels of a stage (``res5`` of ResNet-50: 2048), whether or not it is one
        of ``out_features`` (the C4 head runs ``res5`` itself)."""
        if name not in self._shapes:
            raise ValueError(f"this ResNet has no stage '{name}' (it has {list(self._shapes)})")
        return self._shapes[name].channels

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and stages ``res2..`` up to ``freeze_at``."""
        if not 0 <= freeze_at <= len(self.stage_names) + 1:
            raise ValueError(
                f"freeze_at must be in 0..{len(self.stage_names) + 1}, got {freeze_at}"
            )
        self.freeze_at = freeze_at
        if freeze_at >= 1:
            for p in (*self.conv1.parameters(), *self.bn1.parameters()):
                p.requires_grad_(False)
            self.bn1 = freeze_batchnorm(self.bn1)
        for i, stage in enumerate(self.stages(), start=2):
            if freeze_at >= i:
                for p in stage.parameters():
                    p.requires_grad_(False)
                freeze_batchnorm(stage)

    def fuse(self, winograd: bool = False) -> None:
        """For inference, in place: a stem whose norm was folded runs conv + bias + ReLU as
        one :class:`~resdet.layers.fuse.FusedConv2d` (the blocks fuse themselves; ``winograd``
        is not used: the 7x7 stem has no Winograd form here). Every block of a stage but the
        first may write its residual sum into its input (``owns_input``), unless a hook could
        see or keep that tensor: one on the previous block or on this one, or inside them.
        Hooks are looked for now: register them on the model before it is fused (the fused
        inference copy keeps them), not on the fused copy."""
        if isinstance(self.bn1, nn.Identity) and type(self.conv1) is nn.Conv2d:
            self.conv1 = FusedConv2d(self.conv1, relu=True)
            self.relu = nn.Identity()  # the ReLU now runs inside conv1
        for stage in self.stages():
            for prev, block in zip(stage, list(stage)[1:]):
                block.owns_input = not (hooked(prev) or hooked(block))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        shapes = {n: s for n, s in self._shapes.items() if n in self.out_features}
        return shapes

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs: Dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        names = ["stem", *self.stage_names]
        if "stem" in self.out_features:
            outputs["stem"] = x
        for idx, (name, stage) in enumerate(zip(self.stage_names, self.stages()), start=1):
            if idx > self._last:
                break  # e.g. the C4 detector's trunk stops at res4; res5 runs per region
            x = stage(x)
            if name in self.out_features:
                outputs[name] = x
        if "logits" in self.out_features:
            assert self.fc is not None and self._last == len(names)
            outputs["logits"] = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return outputs


def build_resnet(
    cfg_backbone: object,
    num_classes: int = 0,
    out_features: Optional[Sequence[str]] = None,
) -> ResNet:
    """Build a ResNet from a ``MODEL.BACKBONE`` config section."""
    b = cfg_backbone
    return ResNet(
        depth=b.DEPTH,
        stem=b.STEM,
        plain=b.PLAIN,
        shortcut=b.SHORTCUT,
        stride_in_1x1=b.STRIDE_IN_1X1,
        norm=b.NORM,
        freeze_at=b.FREEZE_AT,
        out_features=list(out_features if out_features is not None else b.OUT_FEATURES),
        num_classes=num_classes,
        zero_init_residual=b.ZERO_INIT_RESIDUAL,
        width=b.WIDTH if b.STEM == "imagenet" else (b.WIDTH if b.WIDTH != 64 else 16),
    )
