"""Classification pipelines: ``uint8[H, W, 3]`` RGB numpy image in, ``float32[3, H, W]`` tensor out.

Every builder returns a callable (a :class:`ClsTransform`) wrapping an albumentations
``Compose``. Normalization is ``(pixel - mean) / std`` with ``mean``/``std`` given per RGB
channel in 0–255 units, e.g. ImageNet ``(123.675, 116.28, 103.53)`` / ``(58.395, 57.12, 57.375)``.

Recipes from He et al. 2015 ("Deep Residual Learning"):

- ImageNet training (Sec. 3.4): shorter side resized to a random length in [256, 480] (scale
  augmentation, *not* RandomResizedCrop), a random 224×224 crop, horizontal flip, and the
  AlexNet "fancy PCA" colour augmentation (:class:`ImageNetPCALighting`).
- ImageNet testing: single 224 center crop of the 256-short-side image, or the standard
  10-crop test (:func:`ten_crop_transform`); the caller averages the 10 softmaxes.
- CIFAR-10 (Sec. 4.2): 4 pixels padded on each side, a random 32×32 crop, horizontal flip. The
  paper subtracts the per-pixel mean; resdet uses per-channel mean/std instead (the common
  reimplementation choice, and it needs no stored mean image). Padding is applied *after*
  normalization, so padded pixels are 0 after mean subtraction, i.e. the mean colour, as in the
  paper's "zero-padded" mean-subtracted input.

Randomness: albumentations keeps its own RNG inside each ``Compose``. A DataLoader forks its
workers from one process, so every worker would inherit the same RNG state and produce the same
"random" crops; :class:`ClsTransform` therefore reseeds itself once per worker from
``torch.utils.data.get_worker_info().seed`` (distinct per worker and per epoch, and
reproducible under ``torch.manual_seed``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from albumentations.pytorch import ToTensorV2

from resdet.data.random_state import seed_compose

logger = logging.getLogger(__name__)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClsTransform",
    "ImageNetPCALighting",
    "TenCropTransform",
    "cifar_eval_transform",
    "cifar_train_transform",
    "generic_eval_transform",
    "generic_train_transform",
    "imagenet_eval_transform",
    "imagenet_train_transform",
    "ten_crop",
    "ten_crop_transform",
]

Triple = Tuple[float, float, float]

# Per-channel RGB statistics in 0–255 units.
IMAGENET_MEAN: Triple = (123.675, 116.28, 103.53)
IMAGENET_STD: Triple = (58.395, 57.12, 57.375)
CIFAR10_MEAN: Triple = (125.307, 122.950, 113.865)
CIFAR10_STD: Triple = (62.993, 62.089, 66.705)

# Principal components of ImageNet RGB pixels (pixel values in [0, 1]), as used by AlexNet and
# fb.resnet.torch, whose ResNet reproduction this recipe follows. Rows of the eigvec are R, G, B.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class ImageNetPCALighting(A.ImageOnlyTransform):
    """AlexNet "fancy PCA" lighting noise with the fixed ImageNet principal components.

    Per image, draws ``alpha ~ N(0, std)`` (one per component) and adds the same RGB offset
    ``255 * eigvec @ (alpha * eigval)`` to every pixel, i.e. a per-channel constant shift in
    0–255 units, then clips to [0, 255]. ``uint8`` images stay ``uint8`` (rounded); ``float32``
    images must hold 0–255 values and stay ``float32``.

    Unlike ``A.FancyPCA``, which estimates components from each image, this uses the dataset-wide
    ImageNet eigen-decomposition the paper's AlexNet-style augmentation refers to.
    """

    class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
        std: float
        eigval: Sequence[float]
        eigvec: Sequence[Sequence[float]]

    def __init__(
        self,
        std: float = 0.1,
        eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
        eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if std < 0:
            raise ValueError(f"ImageNetPCALighting: std must be >= 0, got {std}")
        self.std = float(std)
        self.eigval = np.asarray(eigval, dtype=np.float64).reshape(3)
        self.eigvec = np.asarray(eigvec, dtype=np.float64).reshape(3, 3)

    def get_params(self) -> dict:
        alpha = self.random_generator.normal(0.0, self.std, size=3)
        rgb_shift = 255.0 * self.eigvec @ (alpha * self.eigval)
        return {"rgb_shift": rgb_shift.astype(np.float32)}

    def apply(self, img: np.ndarray, rgb_shift: np.ndarray, **params: Any) -> np.ndarray:
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"ImageNetPCALighting expects an RGB HxWx3 image, got {img.shape}")
        out = np.clip(img.astype(np.float32) + rgb_shift, 0.0, 255.0)
        if img.dtype == np.uint8:
            return np.rint(out).astype(np.uint8)
        return out.astype(img.dtype, copy=False)

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ("std", "eigval", "eigvec")


class ClsTransform:
    """``image -> tensor`` wrapper around an albumentations ``Compose``.

    Call with a ``uint8[H, W, 3]`` RGB numpy image; returns what the pipeline ends in
    (``float32[3, h, w]`` for every builder here). Reseeds once per DataLoader worker; see the
    module docstring.
    """

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose
        self._seeded_pid: int | None = None

    def _maybe_reseed(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None or self._seeded_pid == os.getpid():
            return
        seed_compose(self.compose, int(info.seed % 2**32))
        self._seeded_pid = os.getpid()

    def set_seed(self, seed: int | None) -> None:
        """Make the random augmentations reproducible (``None``: fresh entropy)."""
        seed_compose(self.compose, seed)

    def _augment(self, image: np.ndarray) -> Any:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", type(image).__name__)
            raise ValueError(f"expected an RGB image as a numpy array HxWx3, got {shape}")
        self._maybe_reseed()
        return self.compose(image=image)["image"]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self._augment(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.compose})"


class TenCropTransform(ClsTransform):
    """Resize + normalize with the wrapped ``Compose``, then :func:`ten_crop`.

    Returns ``float32[10, 3, size, size]``: crops 0..4 are top-left, top-right, bottom-left,
    bottom-right, center; crops 5..9 are their horizontal flips in the same order.
    """

    def __init__(self, compose: A.Compose, size: int) -> None:
        super().__init__(compose)
        self.size = size

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return ten_crop(self._augment(image), size=self.size, resize=None)


def _normalize_to_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    # max_pixel_value=1 because mean/std are already in 0–255 units.
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=1.0), ToTensorV2()]


def _short_side_range(scale_range: Sequence[int]) -> A.SmallestMaxSize:
    lo, hi = int(scale_range[0]), int(scale_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
    # A list makes SmallestMaxSize pick one length uniformly per image (integers lo..hi).
    return A.SmallestMaxSize(max_size=list(range(lo, hi + 1)), area_for_downscale="image")


def imagenet_train_transform(
    size: int = 224,
    scale_range: Tuple[int, int] = (256, 480),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pca_std: float = 0.1,
    seed: int | None = None,
) -> ClsTransform:
    """The paper's ImageNet training augmentation (He et al. Sec. 3.4).

    Shorter side -> random integer in ``scale_range``; random ``size×size`` crop (zero-padded if
    the image is still smaller); horizontal flip with p=0.5; PCA lighting with
    ``alpha ~ N(0, pca_std)`` (``pca_std=0`` disables it); normalize. Output ``float32[3, size,
    size]``.
    """
    ops: list = [
        _short_side_range(scale_range),
        A.RandomCrop(size, size, pad_if_needed=True),
        A.HorizontalFlip(p=0.5),
    ]
    if pca_std > 0:
        ops.append(ImageNetPCALighting(std=pca_std, p=1.0))
    return _seeded(A.Compose(ops + _normalize_to_tensor(mean, std)), seed)


def imagenet_eval_transform(
    size: int = 224,
    resize: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ClsTransform:
    """Single-crop test: shorter side -> ``resize``, center ``size×size`` crop, normalize.

    Output ``float32[3, size, size]``.
    """
    ops = [
        A.SmallestMaxSize(max_size=resize, area_for_downscale="image"),
        A.CenterCrop(size, size, pad_if_needed=True),
    ]
    return ClsTransform(A.Compose(ops + _normalize_to_tensor(mean, std)))


def ten_crop(
    image: np.ndarray | torch.Tensor, size: int = 224, resize: int | None = 256
) -> torch.Tensor:
    """The standard 10-crop test views of one image.

    Args:
        image: ``[H, W, C]`` numpy array or ``[C, H, W]`` tensor (any dtype).
        size: crop side length.
        resize: shorter side is resized to this first (opencv for numpy input, antialiased
            torchvision resize for tensors); ``None`` keeps the image as is.

    Returns:
        ``[10, C, size, size]`` tensor with the input's dtype: crops 0..4 are top-left,
        top-right, bottom-left, bottom-right and center; crop ``5 + i`` is crop ``i`` flipped
        horizontally. (torchvision's ``ten_crop`` instead crops the flipped image, which puts
        the mirrored top-*right* crop at index 5.)
    """
    if isinstance(image, np.ndarray):
        if resize is not None:
            image = A.SmallestMaxSize(max_size=resize, area_for_downscale="image", p=1.0)(
                image=image
            )["image"]
        if image.ndim == 2:
            image = image[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    else:
        tensor = image
        if resize is not None:
            tensor = TF.resize(tensor, resize, antialias=True)
    h, w = tensor.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"ten_crop: image {h}x{w} is smaller than the {size}x{size} crop")
    five = TF.five_crop(tensor, [size, size])
    return torch.stack(list(five) + [TF.hflip(c) for c in five])


def ten_crop_transform(
    size: int = 224,
    resize: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> TenCropTransform:
    """``uint8[H, W, 3]`` -> ``float32[10, 3, size, size]``: shorter side -> ``resize``,
    normalize, then :func:`ten_crop`. Average the 10 softmaxes per image at evaluation."""
    ops = [A.SmallestMaxSize(max_size=resize, area_for_downscale="image")]
    return TenCropTransform(A.Compose(ops + _normalize_to_tensor(mean, std)), size=size)


def cifar_train_transform(
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    size: int = 32,
    padding: int = 4,
    seed: int | None = None,
) -> ClsTransform:
    """CIFAR training augmentation (He et al. Sec. 4.2): normalize, pad ``padding`` zeros on
    each side (zero = the mean colour after normalization), random ``size×size`` crop, flip.

    Output ``float32[3, size, size]``.
    """
    ops = [
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=1.0),
        A.Pad(padding=padding, fill=0, border_mode=cv2.BORDER_CONSTANT),
        A.RandomCrop(size, size, pad_if_needed=True),
        A.HorizontalFlip(p=0.5),
        ToTensorV2(),
    ]
    return _seeded(A.Compose(ops), seed)


def cifar_eval_transform(
    mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> ClsTransform:
    """CIFAR test: the original 32×32 image, normalized. Output ``float32[3, 32, 32]``."""
    return ClsTransform(A.Compose(_normalize_to_tensor(mean, std)))


def generic_train_transform(
    size: int = 64,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale_range: Tuple[int, int] | None = None,
    seed: int | None = None,
) -> ClsTransform:
    """Light augmentation for small ImageFolder datasets (e.g. the embedded shapes crops).

    Shorter side -> random integer in ``scale_range`` (default ``(size, round(1.25 * size))``),
    random ``size×size`` crop, flip, mild colour jitter (p=0.8), normalize. Output
    ``float32[3, size, size]``.
    """
    if scale_range is None:
        scale_range = (size, int(round(1.25 * size)))
    ops = [
        _short_side_range(scale_range),
        A.RandomCrop(size, size, pad_if_needed=True),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
    ]
    return _seeded(A.Compose(ops + _normalize_to_tensor(mean, std)), seed)


def generic_eval_transform(
    size: int = 64,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ClsTransform:
    """Shorter side -> ``size``, center ``size×size`` crop, normalize: the single-crop test of
    :func:`imagenet_eval_transform` with ``resize = size``.

    Output ``float32[3, size, size]``.
    """
    return imagenet_eval_transform(size, size, mean, std)


def _seeded(compose: A.Compose, seed: int | None) -> ClsTransform:
    seed_compose(compose, seed)
    return ClsTransform(compose)
