"""CIFAR-10 loader on tiny generated batches in the standard python-pickle layout."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from resdet.data.cifar import CIFAR10
from resdet.data.records import DatasetError

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 20


def _batch(rng: np.random.Generator, start: int) -> dict:
    images = rng.integers(0, 256, (PER_BATCH, 32, 32, 3), dtype=np.uint8)
    # Pixel (0, 0, R) carries the global image index so order can be checked.
    images[:, 0, 0, 0] = np.arange(start, start + PER_BATCH) % 256
    data = images.transpose(0, 3, 1, 2).reshape(PER_BATCH, 3072)  # R plane, G plane, B plane
    labels = [int(x) for x in rng.integers(0, 10, PER_BATCH)]
    return {b"batch_label": b"fake", b"data": data, b"labels": labels}, images


def _write(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture()
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    train_images, train_labels = [], []
    for i in range(1, 6):
        batch, images = _batch(rng, (i - 1) * PER_BATCH)
        _write(root / f"data_batch_{i}", batch)
        train_images.append(images)
        train_labels += batch[b"labels"]
    test, test_images = _batch(rng, 200)
    _write(root / "test_batch", test)
    _write(root / "batches.meta", {b"label_names": [n.encode() for n in NAMES]})
    return {
        "root": root,
        "train_images": np.concatenate(train_images),
        "train_labels": np.array(train_labels),
        "test_images": test_images,
        "test_labels": np.array(test[b"labels"]),
    }


def test_splits_sizes_order_and_class_names(cifar_dir):
    root = str(cifar_dir["root"])
    train = CIFAR10(root, "train", val_size=30)
    val = CIFAR10(root, "val", val_size=30)
    trainval = CIFAR10(root, "trainval")
    test = CIFAR10(root, "test")

    assert (len(train), len(val), len(trainval), len(test)) == (70, 30, 100, 20)
    assert train.class_names == NAMES
    # val is the fixed tail of the training files, train the head: disjoint and complete.
    np.testing.assert_array_equal(train.images, cifar_dir["train_images"][:70])
    np.testing.assert_array_equal(val.images, cifar_dir["train_images"][70:])
    np.testing.assert_array_equal(val.labels, cifar_dir["train_labels"][70:])
    np.testing.assert_array_equal(test.images, cifar_dir["test_images"])
    np.testing.assert_array_equal(trainval.labels, cifar_dir["train_labels"])
    # val_size=0: train is everything.
    assert len(CIFAR10(root, "train", val_size=0)) == 100


def test_item_is_rgb_chw_tensor_and_label(cifar_dir):
    ds = CIFAR10(str(cifar_dir["root"]), "test")
    image, label = ds[3]
    expected = cifar_dir["test_images"][3]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    np.testing.assert_array_equal(image.numpy(), expected.transpose(2, 0, 1))
    assert label == cifar_dir["test_labels"][3] and isinstance(label, int)


def test_transform_gets_hwc_uint8_and_parent_root_works(cifar_dir):
    seen = []

    def transform(img):
        seen.append((img.shape, img.dtype))
        return float(img[..., 1].mean())

    ds = CIFAR10(str(cifar_dir["root"].parent), "test", transform=transform)  # parent dir
    value, _ = ds[0]
    assert seen == [((32, 32, 3), np.uint8)]
    assert value == pytest.approx(cifar_dir["test_images"][0][..., 1].mean())


def test_channel_mean_std_matches_numpy(cifar_dir):
    ds = CIFAR10(str(cifar_dir["root"]), "trainval")
    mean, std = ds.channel_mean_std()
    pixels = cifar_dir["train_images"].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-6)


def test_str_keys_from_python2_files_are_accepted(cifar_dir):
    root = cifar_dir["root"]
    _write(root / "batches.meta", {"label_names": NAMES})
    assert CIFAR10(str(root), "test").class_names == NAMES


def test_missing_file_names_it(cifar_dir):
    os.remove(cifar_dir["root"] / "data_batch_3")
    with pytest.raises(DatasetError, match="data_batch_3"):
        CIFAR10(str(cifar_dir["root"]), "train")


def test_malformed_batches_name_file_and_problem(cifar_dir):
    root = cifar_dir["root"]
    rng = np.random.default_rng(1)
    batch, _ = _batch(rng, 0)

    _write(root / "test_batch", {b"data": batch[b"data"][:, :100], b"labels": batch[b"labels"]})
    with pytest.raises(DatasetError, match=r"test_batch.*\[N, 3072\]"):
        CIFAR10(str(root), "test")

    _write(root / "test_batch", {b"data": batch[b"data"], b"labels": batch[b"labels"][:-1]})
    with pytest.raises(DatasetError, match=r"test_batch.*'labels'"):
        CIFAR10(str(root), "test")

    _write(root / "test_batch", {b"data": batch[b"data"], b"labels": [12] * PER_BATCH})
    with pytest.raises(DatasetError, match=r"test_batch.*label 12"):
        CIFAR10(str(root), "test")

    (root / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match="test_batch"):
        CIFAR10(str(root), "test")


def test_pickle_with_code_is_refused_as_dataset_error(cifar_dir):
    class _Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    _write(cifar_dir["root"] / "test_batch", {b"data": _Evil()})
    with pytest.raises(DatasetError, match=r"test_batch.*posix\.getcwd|test_batch.*nt\.getcwd"):
        CIFAR10(str(cifar_dir["root"]), "test")


def test_bad_split_and_val_size(cifar_dir):
    root = str(cifar_dir["root"])
    with pytest.raises(ValueError, match="split"):
        CIFAR10(root, "validation")
    with pytest.raises(DatasetError, match="val_size"):
        CIFAR10(root, "train", val_size=100)
    with pytest.raises(DatasetError, match="val_size=0"):
        CIFAR10(root, "val", val_size=0)
