"""Which evaluators a detection test set runs."""

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
