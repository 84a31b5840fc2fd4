"""tools/infer.py on a folder of generated PNG/JPEG images (RGB, grey, RGBA, one corrupt) with
a tiny random detector: pictures with boxes, one COCO-style json, bad files reported."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from tiny_detector import save_tiny_detector
from tool_loader import load_tool

TINY = [
    "MODEL.BACKBONE.NAME", "resnet", "MODEL.BACKBONE.DEPTH", "18", "MODEL.BACKBONE.WIDTH", "16",
    "MODEL.ANCHOR.SIZES", "[[16, 32, 64]]", "INPUT.SIZE_DIVISIBILITY", "16",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    "MODEL.ROI_HEADS.NUM_CLASSES", "7", "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "100",
    "DATASETS.TEST", "[shapes_val]",  # class names come from here: the checkpoint has none
]  # fmt: skip


def _infer_main():
    return load_tool("infer").main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("w") / "det.pth")
    save_tiny_detector(path, TINY)
    return path


def _write_images(root) -> dict:
    """name -> (height, width) of what was written."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)

    def img(h, w, c):
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, c)).astype(np.uint8)
        return np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:h, :w]

    cv2.imwrite(str(root / "a.png"), img(90, 140, 3))
    cv2.imwrite(str(root / "b.jpg"), img(300, 120, 3))
    cv2.imwrite(str(root / "sub" / "grey.png"), img(40, 40, 1)[:, :, 0])
    cv2.imwrite(str(root / "sub" / "rgba.png"), img(64, 50, 4))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")
    return {"a.png": (90, 140), "b.jpg": (300, 120), "sub/grey.png": (40, 40),
            "sub/rgba.png": (64, 50)}  # fmt: skip


def test_infer_folder_writes_pictures_and_json(tmp_path, weights, capsys):
    written = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    code = _infer_main()(
        ["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(out),
         "--score-thresh", "0.2", "--device", "cpu"]
    )  # fmt: skip
    assert code == 1  # one unreadable image, reported, the rest done
    err = capsys.readouterr().err
    assert "broken.png" in err and "cannot decode" in err
    results = json.loads((out / "detections.json").read_text())
    assert results, "random weights at 0.2 should still give detections"
    by_file = {}
    for r in results:
        by_file.setdefault(os.path.relpath(r["file_name"], tmp_path / "in"), []).append(r)
    assert set(by_file) <= set(written)
    for name, (h, w) in written.items():
        picture = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert picture is not None and picture.shape == (h, w, 3), name
        for r in by_file.get(name, []):
            x, y, bw, bh = r["bbox"]
            assert 0 <= x and 0 <= y and x + bw <= w + 0.01 and y + bh <= h + 0.01
            assert r["score"] > 0.2 and 1 <= r["category_id"] <= 7
            assert r["category_name"] in ("circle", "square", "triangle", "star", "cross",
                                          "ring", "crescent")  # fmt: skip
    assert not (out / "broken.png").exists() and not (out / "notes.png").exists()
    # Boxes were drawn where something was found: the picture differs from the input.
    name = max(by_file, key=lambda n: len(by_file[n]))
    original = cv2.imread(str(tmp_path / "in" / name), cv2.IMREAD_COLOR)
    drawn = cv2.imread(str(out / name), cv2.IMREAD_COLOR)
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100
    ids = {r["image_id"] for r in results}
    assert ids <= set(range(5))


def test_infer_single_file_and_bad_args(tmp_path, weights):
    image = tmp_path / "one.jpg"
    cv2.imwrite(str(image), np.full((50, 80, 3), 200, np.uint8))
    main = _infer_main()
    args = ["--weights", weights, "--input", str(image), "--output", str(tmp_path / "o")]
    assert main([*args, "--score-thresh", "0.0", "--no-pictures"]) == 0
    assert json.loads((tmp_path / "o" / "detections.json").read_text())
    assert not (tmp_path / "o" / "one.jpg").exists()
    # KEY VALUE overrides right after the --input values are overrides, not inputs.
    over = ["--weights", weights, "--output", str(tmp_path / "p"), "--input", str(image),
            "TEST.FAST_INFERENCE", "False"]  # fmt: skip
    assert main(over) == 0 and (tmp_path / "p" / "one.jpg").is_file()
    assert main(["--weights", weights, "--input", str(tmp_path / "nope"), "--output", "x"]) == 2
    assert (
        main(["--weights", str(tmp_path / "no.pth"), "--input", str(image), "--output", "x"]) == 2
    )


def _write_clip(path, frames=5, h=72, w=96, fps=10.0):
    """A short mp4v clip of moving blocks over coarse noise; returns the RGB frames written."""
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        coarse = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8)
        frame = np.kron(coarse, np.ones((8, 8, 1), np.uint8))
        frame[10:40, 8 + 6 * i : 38 + 6 * i] = (20, 220, 40)
        writer.write(frame)
    writer.release()


def _count_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_video_round_trip_and_broken_video(tmp_path, weights, capsys):
    _write_clip(tmp_path / "clip.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 4)
    out = tmp_path / "out"
    code = _infer_main()(
        ["--weights", weights, "--input", str(tmp_path / "clip.mp4"), str(tmp_path / "broken.mp4"),
         "--output", str(out), "--score-thresh", "0.2", "--batch-size", "2", "--device", "cpu"]
    )  # fmt: skip
    assert code == 1  # the broken file is reported; the good one is done
    err_lines = [x for x in capsys.readouterr().err.splitlines() if "broken.mp4" in x]
    assert err_lines[0].startswith("error: ") and "cannot open as a video" in err_lines[0]
    assert _count_frames(out / "clip.mp4") == 5
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (96, 72)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    cap.release()
    records = [json.loads(x) for x in (out / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["time"] for r in records] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    dets = [d for r in records for d in r["detections"]]
    assert dets, "random weights at 0.2 should still give detections"
    for d in dets:
        x, y, bw, bh = d["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= 96.01 and y + bh <= 72.01 and d["score"] > 0.2
        assert "image_id" not in d and d["category_name"]
    assert not (out / "broken.jsonl").exists() and not (out / "detections.json").exists()


def test_glob_patterns_and_class_filter(tmp_path, weights, capsys):
    written = _write_images(tmp_path / "in")
    main = _infer_main()
    base = ["--weights", weights, "--score-thresh", "0.2", "--device", "cpu", "--no-pictures"]
    pattern = str(tmp_path / "in" / "**" / "*.png")  # quoted: expanded by the tool
    assert main([*base, "--input", pattern, "--output", str(tmp_path / "all")]) == 1
    capsys.readouterr()
    every = json.loads((tmp_path / "all" / "detections.json").read_text())
    files = {os.path.relpath(r["file_name"], tmp_path / "in") for r in every}
    assert files <= {n for n in written if n.endswith(".png")} and "b.jpg" not in files
    assert len(files) >= 2
    names = sorted({r["category_name"] for r in every})
    assert len(names) >= 2, "the filter test needs two classes among the detections"
    keep = names[:1] + names[2:3]  # one or two of them, not all

    code = main([*base, "--input", pattern, "--output", str(tmp_path / "some"),
                 "--classes", ",".join(keep)])  # fmt: skip
    assert code == 1
    some = json.loads((tmp_path / "some" / "detections.json").read_text())
    assert some == [r for r in every if r["category_name"] in keep]
    capsys.readouterr()

    code = main([*base, "--input", pattern, "--output", str(tmp_path / "x"), "--classes",
                 "circle,cirle"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --classes: unknown class 'cirle'; did you mean circle? the model's classes are "
        "circle, square, triangle, star, cross, ring, crescent"
    ]
    assert main([*base, "--input", str(tmp_path / "in" / "*.gif"), "--output", "x"]) == 2
    assert "no file matches the pattern" in capsys.readouterr().err
