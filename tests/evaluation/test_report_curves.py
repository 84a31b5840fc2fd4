"""Report curves: the PR curves are COCOeval's precision array; the threshold curves and the
best-F1 threshold agree with COCOeval run on the thresholded detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval
from report_cases import (
    coco_index,
    make_gt,
    make_results,
    random_set,
    reference_cocoeval,
    reference_counts,
    write_known_set,
)

from resdet.evaluation.report_curves import (
    THRESHOLD_GRID,
    best_f1,
    plot_pr_curves,
    plot_threshold_curves,
    pr_curves,
    threshold_curves,
)
from resdet.evaluation.report_data import build_report_data, load_report_data


def test_pr_curves_are_cocoevals_precision_array() -> None:
    gt, results = random_set(seed=3)
    data = build_report_data(coco_index(gt), results)
    reference = reference_cocoeval(gt, results)
    for iou, t in ((0.5, 0), (0.75, 5)):
        curves = pr_curves(data, iou)
        np.testing.assert_array_equal(curves["recall"], reference.params.recThrs)
        p = reference.eval["precision"][t, :, :, 0, -1]
        for k, name in enumerate(["a", "b", "c"]):
            np.testing.assert_array_equal(curves[name], p[:, k])
        np.testing.assert_allclose(curves["all classes"], p.mean(axis=1))
    # The mean of the overall curve is the AP50 / AP75 of COCOeval's summary.
    reference_stats = _stats(reference)
    assert np.mean(pr_curves(data, 0.5)["all classes"]) == pytest.approx(reference_stats[1])
    assert np.mean(pr_curves(data, 0.75)["all classes"]) == pytest.approx(reference_stats[2])


def _stats(e: COCOeval) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        e.summarize()
    return e.stats


def test_class_without_ground_truth_has_no_curve() -> None:
    gt = make_gt([(1, 0, [10, 10, 50, 50])], num_images=1)
    data = build_report_data(coco_index(gt), make_results([(1, 0, [10, 10, 50, 50], 0.9)]))
    curves = pr_curves(data, 0.5)
    assert np.isnan(curves["b"]).all() and np.isnan(curves["c"]).all()
    np.testing.assert_array_equal(curves["all classes"], curves["a"])
    np.testing.assert_allclose(curves["a"], 1.0)  # pycocotools divides by tp + fp + eps


@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_curves_count_cocoevals_matches(seed: int) -> None:
    gt, results = random_set(seed)
    data = build_report_data(coco_index(gt), results)
    curves = threshold_curves(data)
    for i in (0, 20, 45, 70, 95):
        tp, fp, n_gt = reference_counts(gt, results, THRESHOLD_GRID[i])
        for k, name in enumerate(["a", "b", "c"]):
            c = curves[name]
            if tp[k] + fp[k]:
                assert c["precision"][i] == pytest.approx(tp[k] / (tp[k] + fp[k]))
            assert n_gt[k] > 0
            assert c["recall"][i] == pytest.approx(tp[k] / n_gt[k])
        c = curves["all classes"]
        assert c["recall"][i] == pytest.approx(tp.sum() / n_gt.sum())
        assert c["f1"][i] == pytest.approx(2 * tp.sum() / (tp.sum() + fp.sum() + n_gt.sum()))


def test_best_f1_on_the_known_set(tmp_path) -> None:
    # Ten detections, six right, nine objects. Dropping the 0.60 duplicate gives 6 of 9 kept
    # right and 6 of 9 objects found: F1 2/3 at score >= 0.65, the best (0.60: 12/19,
    # 0.70: 10/17, 0.75: 10/16).
    known = write_known_set(tmp_path)
    best = best_f1(load_report_data(known.gt_json, known.dt_json))
    overall = best["all classes"]
    assert overall.threshold == pytest.approx(0.65)
    assert (overall.precision, overall.recall, overall.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert overall.num_gt == 9
    # Class a: 0.95, 0.90, 0.88 right, the 0.60 duplicate wrong, 4 objects: best at 0.88.
    assert best["a"].threshold == pytest.approx(0.88)
    assert best["a"].f1 == pytest.approx(2 * 3 / (3 + 4))


def test_plots_are_written(tmp_path) -> None:
    known = write_known_set(tmp_path)
    data = load_report_data(known.gt_json, known.dt_json)
    pr = plot_pr_curves({0.5: pr_curves(data, 0.5)}, str(tmp_path / "pr.png"))
    th = plot_threshold_curves(threshold_curves(data), best_f1(data), str(tmp_path / "t.png"))
    for path in (pr, th):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
