"""Tests for the embedded shapes generator: determinism, COCO/VOC agreement, crops, caching."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from resdet.data.shapes import (
    BACKGROUND_CLASS,
    SHAPES_CLASSES,
    generate_shapes,
    render_scene,
    shapes_paths,
    validate_shapes,
)

SMALL = dict(num_train=6, num_val=4, seed=3, crop_size=32)


@pytest.fixture(scope="module")
def run60(tmp_path_factory):
    """60 train + 12 val scenes with crops, generated once for the read-only tests."""
    root = str(tmp_path_factory.mktemp("shapes60"))
    meta = generate_shapes(root, num_train=60, num_val=12, seed=0, crop_size=32, progress=False)
    return root, meta


def _load(path):
    with open(path) as f:
        return json.load(f)


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_same_seed_gives_identical_output_for_any_worker_count(tmp_path):
    roots = [str(tmp_path / name) for name in ("a", "b", "c")]
    generate_shapes(roots[0], progress=False, **SMALL)
    generate_shapes(roots[1], progress=False, **SMALL)
    generate_shapes(roots[2], progress=False, workers=2, **SMALL)
    for root in roots[1:]:
        for key in ("train_json", "val_json"):
            assert _read_bytes(shapes_paths(root)[key]) == _read_bytes(shapes_paths(roots[0])[key])
        for rel in ("train/000005.jpg", "val/000003.jpg", "VOC/Annotations/train_000002.xml"):
            assert _read_bytes(os.path.join(root, rel)) == _read_bytes(os.path.join(roots[0], rel))
    pixels = [cv2.imread(os.path.join(r, "train", "000004.jpg")) for r in roots]
    assert pixels[0] is not None and pixels[0].std() > 5
    np.testing.assert_array_equal(pixels[0], pixels[1])
    # Each scene depends only on (seed, split, index): rendering it alone reproduces it.
    a, b = render_scene(3, "train", 4), render_scene(3, "train", 4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert (a.image.shape[0], a.image.shape[1]) == pixels[0].shape[:2]
    other = render_scene(4, "train", 4)
    assert other.image.shape != a.image.shape or not np.array_equal(other.image, a.image)


def test_coco_and_voc_agree(run60):
    root, _ = run60
    paths = shapes_paths(root)
    for split in ("train", "val"):
        coco = _load(paths[f"{split}_json"])
        names = {c["id"]: c["name"] for c in coco["categories"]}
        by_image = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        ids = open(os.path.join(paths["voc_root"], "ImageSets", "Main", f"{split}.txt")).read()
        assert ids.split() == [f"{split}_{i:06d}" for i in range(len(coco["images"]))]
        for img in coco["images"]:
            voc_id = f"{split}_{os.path.splitext(img['file_name'])[0]}"
            tree = ET.parse(os.path.join(paths["voc_root"], "Annotations", voc_id + ".xml"))
            assert int(tree.findtext("size/width")) == img["width"]
            assert int(tree.findtext("size/height")) == img["height"]
            voc = []
            for obj in tree.findall("object"):
                assert obj.findtext("difficult") == "0"
                b = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                voc.append((obj.findtext("name"), [b[0] - 1, b[1] - 1, b[2], b[3]]))
            anns = by_image.get(img["id"], [])
            assert len(voc) == len(anns) >= 1
            for (name, box), ann in zip(voc, anns):
                x, y, w, h = ann["bbox"]
                assert name == names[ann["category_id"]]
                np.testing.assert_allclose(box, [x, y, x + w, y + h], atol=1)
            voc_jpg = os.path.join(paths["voc_root"], "JPEGImages", voc_id + ".jpg")
            coco_jpg = os.path.join(paths[f"{split}_images"], img["file_name"])
            assert _read_bytes(voc_jpg) == _read_bytes(coco_jpg)


def test_boxes_inside_images_and_json_well_formed(run60):
    root, meta = run60
    coco = _load(shapes_paths(root)["train_json"])
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(SHAPES_CLASSES) + 1))
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    widths, heights = zip(*sizes.values())
    assert min(widths) >= 160 and max(widths) <= 320 and min(heights) >= 160
    assert any(w > h for w, h in sizes.values()) and any(h > w for w, h in sizes.values())
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= width and y + h <= height
        assert ann["area"] == pytest.approx(w * h) and ann["iscrowd"] == 0
        image = cv2.imread(os.path.join(root, "train", f"{ann['image_id'] - 1:06d}.jpg"))
        assert image.shape[:2] == (height, width)
    assert meta["counts"]["train"]["objects"] == len(coco["annotations"])


def test_all_classes_and_size_classes_occur(run60):
    _, meta = run60
    counts = meta["counts"]["train"]
    assert all(n > 0 for n in counts["per_class"].values()), counts["per_class"]
    areas = counts["areas"]
    total = sum(areas.values())
    assert total == counts["objects"] and total > 60
    # Aimed at ~20/50/30 %; bounds wide enough for 60 images.
    assert 0.08 < areas["small"] / total < 0.35, areas
    assert 0.3 < areas["medium"] / total < 0.7, areas
    assert 0.15 < areas["large"] / total < 0.45, areas


def test_scene_boxes_are_tight_on_visible_pixels(monkeypatch):
    import resdet.data.shapes_render as shapes

    captured = []
    original = shapes._draw_object

    def spy(canvas, drawn, *args):
        original(canvas, drawn, *args)
        captured[:] = [drawn]  # the scene's list of drawn objects, with their visible masks

    monkeypatch.setattr(shapes, "_draw_object", spy)
    occluded = 0
    for index in range(12):
        scene = render_scene(0, "val", index)
        drawn = captured[0]
        h, w = scene.image.shape[:2]
        assert len(drawn) == len(scene.boxes) >= 1
        assert (scene.visible >= 0.6 - 1e-6).all() and (scene.visible <= 1).all()
        occluded += int((scene.visible < 1).sum())
        union = np.zeros((h, w), int)
        for d, (x1, y1, x2, y2), label in zip(drawn, scene.boxes.astype(int), scene.labels):
            assert d.label == label
            union += d.visible
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            inside = np.zeros((h, w), bool)
            inside[y1:y2, x1:x2] = True
            assert not (d.visible & ~inside).any()  # nothing visible outside the box
            # ...and every edge of the box touches a visible pixel: the box is tight.
            assert d.visible[y1, x1:x2].any() and d.visible[y2 - 1, x1:x2].any()
            assert d.visible[y1:y2, x1].any() and d.visible[y1:y2, x2 - 1].any()
        assert union.max() <= 1  # a pixel is visible in at most one object: occlusion honoured
    assert occluded > 0  # the scenes do contain partly covered objects


def test_crops_have_every_class_and_background(run60):
    root, meta = run60
    for split in ("train", "val"):
        folder = shapes_paths(root)[f"crops_{split}"]
        assert sorted(os.listdir(folder)) == sorted((*SHAPES_CLASSES, BACKGROUND_CLASS))
        for cls in os.listdir(folder):
            files = os.listdir(os.path.join(folder, cls))
            assert len(files) == meta["counts"][split]["crops"][cls]
        # One crop per annotated object.
        assert meta["counts"][split]["crops"] == {
            **meta["counts"][split]["per_class"],
            BACKGROUND_CLASS: meta["counts"][split]["crops"][BACKGROUND_CLASS],
        }
    train = shapes_paths(root)["crops_train"]
    for cls in (*SHAPES_CLASSES, BACKGROUND_CLASS):
        files = sorted(os.listdir(os.path.join(train, cls)))
        assert files, cls
        crop = cv2.imread(os.path.join(train, cls, files[0]))
        assert crop.shape == (32, 32, 3)


def test_rerun_skips_and_changed_args_regenerate(tmp_path):
    root = str(tmp_path / "shapes")
    generate_shapes(root, progress=False, **SMALL)
    meta_path = shapes_paths(root)["meta"]
    image = os.path.join(root, "train", "000001.jpg")
    stamps = (os.stat(meta_path).st_mtime_ns, os.stat(image).st_mtime_ns)
    assert validate_shapes(root, **SMALL)
    generate_shapes(root, progress=False, **SMALL)
    assert (os.stat(meta_path).st_mtime_ns, os.stat(image).st_mtime_ns) == stamps

    # Fewer images and another seed: regenerated, and stale files of the old run are gone.
    changed = dict(SMALL, num_train=3, seed=4)
    assert not validate_shapes(root, **changed)
    old = _read_bytes(image)
    meta = generate_shapes(root, progress=False, **changed)
    assert meta["args"]["seed"] == 4 and validate_shapes(root, **changed)
    assert not validate_shapes(root, **SMALL)
    assert sorted(os.listdir(os.path.join(root, "train"))) == [f"{i:06d}.jpg" for i in range(3)]
    assert not os.path.exists(os.path.join(root, "VOC", "Annotations", "train_000005.xml"))
    assert _read_bytes(image) != old

    # A missing file invalidates the cache.
    os.remove(image)
    assert not validate_shapes(root, **changed)
    generate_shapes(root, progress=False, **changed)
    assert os.path.isfile(image)


def test_no_crops_and_bad_arguments(tmp_path):
    root = str(tmp_path / "nocrops")
    generate_shapes(root, num_train=2, num_val=1, crops=False, progress=False)
    assert not os.path.exists(shapes_paths(root)["crops_root"])
    assert validate_shapes(root, num_train=2, num_val=1, crops=False)
    # validate_shapes takes generate_shapes's arguments and defaults, and no other.
    assert not validate_shapes(root, num_train=2, num_val=1)  # crops=True by default
    assert validate_shapes(root, num_train=2, num_val=1, crops=False, workers=2, progress=False)
    with pytest.raises(TypeError, match="num_trian"):
        validate_shapes(root, num_trian=2)
    with pytest.raises(ValueError, match="min_size"):
        generate_shapes(root, min_size=300, max_size=200, progress=False)
    with pytest.raises(ValueError, match="num_train"):
        generate_shapes(root, num_train=-1, progress=False)
