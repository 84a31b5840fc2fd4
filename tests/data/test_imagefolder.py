"""ImageFolderDataset on a small generated root/<class>/<images> tree."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from resdet.data.imagefolder import ImageFolderDataset, scan_image_folder
from resdet.data.records import DatasetError


def _write(path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix if path.suffix.lower() != ".jpeg" else ".jpg", image)
    assert ok
    path.write_bytes(buf.tobytes())


@pytest.fixture()
def tree(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "train"
    # Class dirs created out of order: labels must follow sorted names.
    _write(root / "zebra" / "b.png", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    _write(root / "zebra" / "a.JPEG", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    _write(root / "ant" / "grey.png", grey)
    bgra = rng.integers(0, 256, (8, 6, 4), dtype=np.uint8)
    _write(root / "ant" / "rgba.png", bgra)
    _write(root / "ant" / "nested" / "deep.bmp", np.full((5, 5, 3), 7, np.uint8))
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "ant" / ".hidden.png").write_bytes(b"junk")
    (root / "mole").mkdir()  # a class with no images yet
    return {"root": root, "grey": grey, "bgra": bgra}


def test_class_order_labels_and_listing(tree):
    ds = ImageFolderDataset(str(tree["root"]))
    assert ds.class_names == ["ant", "mole", "zebra"]
    rel = [ds.path(i)[len(str(tree["root"])) + 1 :] for i in range(len(ds))]
    assert rel == ["ant/grey.png", "ant/nested/deep.bmp", "ant/rgba.png", "zebra/a.JPEG",
                   "zebra/b.png"]  # fmt: skip
    assert ds.labels.tolist() == [0, 0, 0, 2, 2]


def test_greyscale_and_rgba_come_out_as_rgb(tree):
    ds = ImageFolderDataset(str(tree["root"]))
    grey_img, grey_label = ds[0]
    assert grey_img.dtype == torch.uint8 and grey_img.shape == (3, 9, 7)
    for c in range(3):
        np.testing.assert_array_equal(grey_img[c].numpy(), tree["grey"])
    assert grey_label == 0

    rgba_img, _ = ds[2]
    assert rgba_img.shape == (3, 8, 6)
    # PNG stored BGRA via opencv; read back as RGB with alpha dropped.
    np.testing.assert_array_equal(rgba_img.permute(1, 2, 0).numpy(), tree["bgra"][..., 2::-1])


def test_transform_receives_hwc_rgb(tree):
    shapes = []
    ds = ImageFolderDataset(str(tree["root"]), transform=lambda im: shapes.append(im.shape) or 5)
    out, label = ds[4]
    assert out == 5 and label == 2 and shapes == [(10, 12, 3)]


def test_val_uses_train_class_order(tree, tmp_path):
    train = ImageFolderDataset(str(tree["root"]))
    val_root = tmp_path / "val"
    _write(val_root / "zebra" / "v.png", np.zeros((4, 4, 3), np.uint8))
    val = ImageFolderDataset(str(val_root), class_names=train.class_names)
    assert val.class_names == train.class_names
    assert val.labels.tolist() == [2]  # "zebra" is label 2 in train, though alone in val

    _write(val_root / "unicorn" / "u.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="unicorn"):
        ImageFolderDataset(str(val_root), class_names=train.class_names)


def test_custom_extensions(tree):
    names, samples = scan_image_folder(str(tree["root"]), extensions=(".png",))
    assert [p for p, _ in samples] == ["ant/grey.png", "ant/rgba.png", "zebra/b.png"]


def test_empty_or_missing_roots_name_the_directory(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        ImageFolderDataset(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty.*no class directories"):
        ImageFolderDataset(str(empty))
    (empty / "cls").mkdir()
    (empty / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="empty.*no images"):
        ImageFolderDataset(str(empty))


def test_corrupt_image_names_the_file(tmp_path):
    root = tmp_path / "d"
    (root / "c").mkdir(parents=True)
    (root / "c" / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    ds = ImageFolderDataset(str(root))
    with pytest.raises(DatasetError, match="bad.jpg"):
        ds[0]
