"""Small decisions of the detection run: evaluators of a test set, weight-convention checks."""

from resdet.config.load import load_config
from resdet.data.records import DatasetMeta
from resdet.engine.detection import evaluator_names


def test_report_adds_the_coco_evaluator_to_any_dataset():
    voc = DatasetMeta(name="aerial_val", class_names=["plane"], evaluator="voc")
    assert evaluator_names(load_config(None), voc) == ["voc"]
    with_report = load_config(None, ["TEST.REPORT", "True"])
    assert evaluator_names(with_report, voc) == ["voc", "coco"]
    both = load_config(None, ["TEST.REPORT", "True", "TEST.EVALUATORS", "[coco, voc]"])
    assert evaluator_names(both, voc) == ["coco", "voc"]


def test_pooler_aligned_compares_effective_values():
    from resdet.config.load import config_to_dict
    from resdet.engine.initial_weights import input_convention_mismatches

    fpn = load_config("configs/coco_r50_fpn.yaml")  # POOLER_ALIGNED None: FPN pools unaligned
    source = config_to_dict(load_config("configs/coco_r50_fpn.yaml"))
    source["MODEL"]["ROI_HEADS"]["POOLER_ALIGNED"] = False
    assert input_convention_mismatches(source, fpn) == []
    source["MODEL"]["ROI_HEADS"]["POOLER_ALIGNED"] = True
    (problem,) = input_convention_mismatches(source, fpn)
    assert "POOLER_ALIGNED True but this config has False" in problem
