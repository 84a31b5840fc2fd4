"""Confusion matrix: the known set's cells, and a diagonal equal to COCOeval's true positives
(random sets with crowd regions, several thresholds)."""

from __future__ import annotations

import numpy as np
import pytest
from report_cases import (
    coco_index,
    make_gt,
    make_results,
    random_set,
    reference_counts,
    write_known_set,
)

from resdet.evaluation.report_confusion import confusion_matrix, normalize_rows, plot_confusion
from resdet.evaluation.report_data import build_report_data, load_report_data


def test_known_errors_land_in_their_cells(tmp_path) -> None:
    known = write_known_set(tmp_path)
    data = load_report_data(known.gt_json, known.dt_json)
    cm = confusion_matrix(data, score_thresh=0.5)
    a, b, c, bg = 0, 1, 2, 3
    expected = np.zeros((4, 4), np.int64)
    expected[a, a] = 3  # objects 1, 6, 9
    expected[b, b] = 2  # objects 2, 8
    expected[c, c] = 1  # object 4
    expected[a, c] = 1  # object 3, an "a" detected as "c"
    expected[bg, b] = 2  # the shifted detection (IoU 1/3) and the background one
    expected[bg, a] = 1  # the duplicate
    expected[b, bg] = 1  # object 5, only found by the shifted box
    expected[c, bg] = 1  # object 7, missed
    np.testing.assert_array_equal(cm, expected)
    # Above the duplicate's score (0.60) it is gone; above 0.82 also the background one and
    # the 0.80-0.65 ones.
    assert confusion_matrix(data, 0.61)[bg, a] == 0
    high = confusion_matrix(data, 0.83)
    assert high[bg, b] == 0 and high[c, c] == 0 and high[c, bg] == 2 and high[a, c] == 1


def test_a_mislabel_below_iou_half_is_a_false_detection_and_a_miss() -> None:
    gt = make_gt([(1, 0, [0, 0, 40, 40])], num_images=1)
    results = make_results([(1, 1, [20, 0, 60, 40], 0.9)])  # class b, IoU 1/3
    cm = confusion_matrix(build_report_data(coco_index(gt), results), 0.0)
    assert cm[0, 1] == 0 and cm[3, 1] == 1 and cm[0, 3] == 1


def test_cross_class_matching_takes_the_best_overlap_first_come_by_score() -> None:
    # Two "a" objects; two "b" detections: the higher-scoring one overlaps both, more the
    # second; the lower one overlaps only the second. Greedy by score: 0.9 takes object 2.
    gt = make_gt([(1, 0, [0, 0, 40, 40]), (1, 0, [10, 0, 50, 40])], num_images=1)
    dets = [(1, 1, [9, 0, 49, 40], 0.9), (1, 1, [11, 0, 51, 40], 0.8)]
    cm = confusion_matrix(build_report_data(coco_index(gt), make_results(dets)), 0.0)
    # 0.9 -> object 2 (IoU 39/41); 0.8 -> object 1 has IoU 29/51 >= 0.5: both a->b.
    assert cm[0, 1] == 2 and cm[3].sum() == 0 and cm[:, 3].sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagonal_equals_cocoeval_true_positives(seed: int) -> None:
    gt, results = random_set(seed)
    assert any(a["iscrowd"] for a in gt["annotations"])  # crowd regions are exercised
    data = build_report_data(coco_index(gt), results)
    for thresh in (0.0, 0.3, 0.5, 0.8):
        cm = confusion_matrix(data, thresh)
        tp, fp, n_gt = reference_counts(gt, results, thresh)
        np.testing.assert_array_equal(np.diag(cm)[:3], tp)
        # Every non-crowd object is in exactly one cell of its row; every kept, non-ignored
        # detection in exactly one cell of its column.
        np.testing.assert_array_equal(cm[:3].sum(axis=1), n_gt)
        np.testing.assert_array_equal(cm[:, :3].sum(axis=0), tp + fp)


def test_row_normalisation_and_plot(tmp_path) -> None:
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 0]])
    n = normalize_rows(cm)
    np.testing.assert_allclose(n, [[0.75, 0.25, 0], [0, 0, 0], [1, 0, 0]])
    path = plot_confusion(cm, ["a", "b"], 0.5, str(tmp_path / "cm.png"))
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"
