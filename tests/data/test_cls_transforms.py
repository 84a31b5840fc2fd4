"""Classification transforms: shapes, normalization, 10-crop layout, PCA lighting, CIFAR crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from resdet.data import cls_transforms as T


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _normalize(img: np.ndarray, mean, std) -> np.ndarray:
    """Reference: HWC uint8 -> CHW float normalized."""
    out = (img.astype(np.float32) - np.float32(mean)) / np.float32(std)
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize(
    "build, hw, out",
    [
        (lambda: T.imagenet_train_transform(seed=0), (300, 400), (3, 224, 224)),
        (lambda: T.imagenet_train_transform(seed=0), (120, 90), (3, 224, 224)),  # upscaled
        (lambda: T.imagenet_eval_transform(), (300, 400), (3, 224, 224)),
        (lambda: T.ten_crop_transform(), (300, 400), (10, 3, 224, 224)),
        (lambda: T.generic_train_transform(64, seed=0), (90, 70), (3, 64, 64)),
        (lambda: T.generic_eval_transform(64), (90, 70), (3, 64, 64)),
        (lambda: T.cifar_train_transform(seed=0), (32, 32), (3, 32, 32)),
        (lambda: T.cifar_eval_transform(), (32, 32), (3, 32, 32)),
    ],
)
def test_output_shapes_and_dtype(build, hw, out):
    result = build()(_image(*hw))
    assert isinstance(result, torch.Tensor)
    assert tuple(result.shape) == out and result.dtype == torch.float32


def test_eval_normalizes_with_mean_std_in_0_255_units():
    img = _image(256, 256, seed=1)
    got = T.imagenet_eval_transform(size=224, resize=256)(img).numpy()
    expected = _normalize(img[16:240, 16:240], T.IMAGENET_MEAN, T.IMAGENET_STD)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_train_with_fixed_scale_is_crop_or_its_mirror():
    img = _image(224, 224, seed=2)
    tf = T.imagenet_train_transform(size=224, scale_range=(224, 224), pca_std=0.0, seed=0)
    ref = _normalize(img, T.IMAGENET_MEAN, T.IMAGENET_STD)
    flips = 0
    for _ in range(12):
        out = tf(img).numpy()
        if np.allclose(out, ref[:, :, ::-1], atol=1e-5):
            flips += 1
        else:
            np.testing.assert_allclose(out, ref, atol=1e-5)
    assert 0 < flips < 12  # p=0.5 flip actually happens, and not always


def test_seed_makes_train_transform_reproducible():
    img = _image(300, 260, seed=3)
    t1, t2 = T.imagenet_train_transform(seed=7), T.imagenet_train_transform(seed=7)
    seq1 = [t1(img) for _ in range(3)]
    seq2 = [t2(img) for _ in range(3)]
    for x, y in zip(seq1, seq2):
        assert torch.equal(x, y)
    assert not torch.equal(seq1[0], seq1[1])  # scale, crop and lighting vary per call


def test_ten_crop_layout_and_flips():
    img = _image(40, 50, seed=4)
    crops = T.ten_crop(img, size=20, resize=None)
    assert crops.shape == (10, 3, 20, 20) and crops.dtype == torch.uint8
    chw = torch.from_numpy(img.transpose(2, 0, 1).copy())
    assert torch.equal(crops[0], chw[:, :20, :20])  # top-left
    assert torch.equal(crops[1], chw[:, :20, 30:])  # top-right
    assert torch.equal(crops[2], chw[:, 20:, :20])  # bottom-left
    assert torch.equal(crops[3], chw[:, 20:, 30:])  # bottom-right
    assert torch.equal(crops[4], chw[:, 10:30, 15:35])  # center
    for i in range(5):
        assert torch.equal(crops[5 + i], crops[i].flip(-1))
    # A tensor input gives the same crops.
    assert torch.equal(T.ten_crop(chw, size=20, resize=None), crops)
    with pytest.raises(ValueError, match="smaller"):
        T.ten_crop(img, size=64, resize=None)


def test_ten_crop_transform_center_matches_single_crop_eval():
    img = _image(256, 384, seed=5)
    ten = T.ten_crop_transform(size=224, resize=256)(img)
    single = T.imagenet_eval_transform(size=224, resize=256)(img)
    torch.testing.assert_close(ten[4], single)
    torch.testing.assert_close(ten[9], single.flip(-1))


def test_ten_crop_resizes_shorter_side():
    img = _image(100, 200, seed=6)
    crops = T.ten_crop(img, size=40, resize=50)
    # 100x200 -> 50x100 (area interpolation for downscaling); top-right crop = columns 60..99.
    resized = cv2.resize(img, (100, 50), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    assert crops.shape == (10, 3, 40, 40)
    np.testing.assert_array_equal(crops[1].numpy(), resized[:, :40, 60:])
    tensor_crops = T.ten_crop(torch.from_numpy(img.transpose(2, 0, 1).copy()), 40, resize=50)
    assert tensor_crops.shape == (10, 3, 40, 40)


def test_pca_lighting_shifts_each_channel_by_a_constant():
    img = np.random.default_rng(8).integers(60, 196, (16, 16, 3), dtype=np.uint8)
    light = T.ImageNetPCALighting(std=0.1, p=1.0)
    light.set_random_seed(0)
    shifts = []
    for _ in range(5):
        out = light(image=img)["image"]
        assert out.dtype == np.uint8 and out.shape == img.shape
        diff = out.astype(np.int32) - img.astype(np.int32)
        per_channel = diff.reshape(-1, 3)
        assert (per_channel == per_channel[0]).all(), "shift is not constant per channel"
        shifts.append(per_channel[0])
    shifts = np.array(shifts)
    assert np.abs(shifts).max() > 0
    assert len({tuple(s) for s in shifts}) > 1  # alpha is redrawn per image
    # The dominant component moves all channels the same way (all eigvec[:, 0] share a sign).
    big = shifts[np.abs(shifts).sum(1) > 6]
    assert all(np.sign(s[s != 0]).min() == np.sign(s[s != 0]).max() for s in big)


def test_pca_lighting_float_and_zero_std():
    img = np.full((4, 4, 3), 100.0, np.float32)
    light = T.ImageNetPCALighting(std=0.0, p=1.0)
    np.testing.assert_array_equal(light(image=img)["image"], img)
    light = T.ImageNetPCALighting(std=0.5, p=1.0)
    light.set_random_seed(1)
    out = light(image=img)["image"]
    assert out.dtype == np.float32
    assert not np.allclose(out, img) and np.ptp(out.reshape(-1, 3), axis=0).max() < 1e-4


def test_cifar_train_is_translated_padded_crop_of_normalized_image():
    img = _image(32, 32, seed=9)
    ref = _normalize(img, T.CIFAR10_MEAN, T.CIFAR10_STD)
    padded = np.zeros((3, 40, 40), np.float32)  # zero padding == the mean colour
    padded[:, 4:36, 4:36] = ref
    tf = T.cifar_train_transform(seed=0)
    offsets = set()
    for _ in range(30):
        out = tf(img).numpy()
        assert out.shape == (3, 32, 32)
        match = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.allclose(
                out,
                padded[:, dy : dy + 32, dx : dx + 32][:, :, ::-1] if flip else
                padded[:, dy : dy + 32, dx : dx + 32],
                atol=1e-5,
            )
        ]  # fmt: skip
        assert match, "output is not a 32x32 window of the zero-padded normalized image"
        offsets.add(match[0][:2])
    assert len(offsets) > 5  # crops really move around


def test_cifar_eval_is_plain_normalization():
    img = _image(32, 32, seed=10)
    out = T.cifar_eval_transform(mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))(img).numpy()
    np.testing.assert_allclose(out, _normalize(img, (1.0, 2.0, 3.0), (2.0, 4.0, 8.0)), atol=1e-5)


def test_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="HxWx3"):
        T.imagenet_eval_transform()(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="scale_range"):
        T.generic_train_transform(64, scale_range=(80, 64))


class _Repeat(Dataset):
    def __init__(self, transform) -> None:
        self.transform = transform
        self.img = _image(40, 40, seed=11)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return self.transform(self.img)


def test_dataloader_workers_get_different_random_streams():
    torch.manual_seed(0)
    ds = _Repeat(T.generic_train_transform(32, scale_range=(32, 40)))
    # batch_size=4 with 2 workers: worker 0 makes batch 0, worker 1 makes batch 1.
    b0, b1 = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert not torch.equal(b0, b1), "forked workers replayed the same augmentations"
