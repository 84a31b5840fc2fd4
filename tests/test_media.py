"""resdet.media: --input resolution (files, folders, globs, videos) and the class filter."""

from __future__ import annotations

import os

import numpy as np
import pytest

from resdet.media import class_filter, collect_inputs, keep_labels
from resdet.predictor import Detections


def test_collect_inputs_files_folders_globs_videos_once_each(tmp_path):
    for rel in ("a.jpg", "b.PNG", "sub/c.png", "sub/clip.MP4", "notes.txt", "sub/deep/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = collect_inputs([str(tmp_path / "sub" / "*.png"), str(tmp_path),
                            str(tmp_path / "a.jpg")])  # fmt: skip
    rel = [(os.path.relpath(p, tmp_path), os.path.relpath(r, tmp_path)) for p, r in found.images]
    # The pattern's matches first (root: the pattern's folder), then the folder's other files.
    assert rel == [("sub/c.png", "sub"), ("a.jpg", "."), ("b.PNG", "."), ("sub/deep/d.png", ".")]
    assert [os.path.relpath(v, tmp_path) for v in found.videos] == ["sub/clip.MP4"]
    recursive = collect_inputs([str(tmp_path / "**" / "*.png")])
    assert sorted(os.path.basename(p) for p, _ in recursive.images) == ["c.png", "d.png"]
    assert {r for _, r in recursive.images} == {str(tmp_path)}
    with pytest.raises(FileNotFoundError, match="no file matches the pattern .*\\*.gif"):
        collect_inputs([str(tmp_path / "*.gif")])
    with pytest.raises(FileNotFoundError, match="no such file or folder: .*nope"):
        collect_inputs([str(tmp_path / "nope")])


def test_class_filter_and_keep_labels():
    names = ["cat", "dog", "kite"]
    assert class_filter("", names) is None
    assert class_filter(" kite, cat ", names).tolist() == [2, 0]
    with pytest.raises(ValueError, match="unknown class 'dgo'; did you mean dog\\?"):
        class_filter("cat,dgo", names)
    dets = Detections(
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([0.9, 0.8, 0.7], np.float32),
        np.array([1, 2, 1]),
        names,
        (10, 10),
    )
    kept = keep_labels(dets, np.array([1]))
    assert kept.labels.tolist() == [1, 1] and kept.scores.tolist() == pytest.approx([0.9, 0.7])
    assert kept.boxes.tolist() == [dets.boxes[0].tolist(), dets.boxes[2].tolist()]
    assert keep_labels(dets, None) is dets
