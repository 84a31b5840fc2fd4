"""Class-aware box-predictor transfer when MODEL.WEIGHTS is a detector of other classes."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from resdet.config.load import config_from_dict
from resdet.data.voc import VOC_CLASSES
from resdet.engine.checkpoint import load_checkpoint, save_checkpoint
from resdet.engine.head_transfer import canonical_class_name, match_classes
from resdet.engine.initial_weights import load_initial_weights
from resdet.export.convert import convert_weights
from resdet.export.convert_detector import coco_categories
from resdet.modeling.detection.build import build_detector


def test_voc_names_all_find_their_coco_class():
    coco, _ = coco_categories()
    mapping = match_classes(coco, VOC_CLASSES)
    assert None not in mapping
    pairs = {v: coco[i] for v, i in zip(VOC_CLASSES, mapping)}
    assert pairs["aeroplane"] == "airplane" and pairs["tvmonitor"] == "tv"
    assert pairs["diningtable"] == "dining table" and pairs["pottedplant"] == "potted plant"
    assert pairs["motorbike"] == "motorcycle" and pairs["sofa"] == "couch"
    assert canonical_class_name("Traffic_Light") == canonical_class_name("traffic light")
    assert match_classes(coco, ["unicorn"]) == [None]


@pytest.fixture(scope="module")
def tv_r18(tmp_path_factory):
    """A random torchvision Faster R-CNN (R18-FPN, COCO's 91 outputs), converted to resdet."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    tv = torchvision.models.detection.FasterRCNN(backbone, num_classes=91).eval()
    root = tmp_path_factory.mktemp("tv18")
    torch.save(tv.state_dict(), root / "tv18.pth")
    convert_weights(str(root / "tv18.pth"), str(root / "tv18_resdet.pth"))
    return tv, str(root / "tv18_resdet.pth")


def _target_model(path: str, num_classes: int):
    cfg = config_from_dict(load_checkpoint(path)["config"])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    torch.manual_seed(1)
    return build_detector(cfg).eval(), cfg


def test_three_classes_by_name_keep_the_source_rows(tv_r18, caplog):
    tv, path = tv_r18
    model, cfg = _target_model(path, 3)
    names = ["Dog", "person", "motorbike"]  # COCO ids 18, 1, 4 (motorbike: motorcycle)
    with caplog.at_level(logging.WARNING):
        load_initial_weights(model, cfg, path, names)
    x = torch.randn(6, 1024, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tv_logits, tv_deltas = tv.roi_heads.box_predictor(x)
        logits, deltas = model.roi_heads.predictor(x)
    ids = [18, 1, 4]
    torch.testing.assert_close(logits[:, :3], tv_logits[:, ids], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits[:, 3], tv_logits[:, 0], rtol=0, atol=1e-6)  # background
    tv_deltas = tv_deltas.view(6, 91, 4)[:, ids].reshape(6, 12)
    torch.testing.assert_close(deltas, tv_deltas, rtol=0, atol=1e-6)
    text = caplog.text
    assert "roi_heads.predictor.cls_score.weight (81, 1024) -> (4, 1024)" in text
    assert "3 of 3 classes copied by name" in text and "motorbike<-motorcycle" in text
    # Everything else came from the checkpoint unchanged.
    assert torch.equal(model.roi_heads.box_head.fc1.weight, tv.roi_heads.box_head.fc6.weight)


def test_unmatched_classes_start_fresh_and_are_listed(tv_r18, caplog):
    _, path = tv_r18
    model, cfg = _target_model(path, 2)
    fresh = model.roi_heads.predictor.cls_score.weight[1].clone()
    with caplog.at_level(logging.WARNING):
        load_initial_weights(model, cfg, path, ["cat", "unicorn"])
    assert torch.equal(model.roi_heads.predictor.cls_score.weight[1], fresh)
    assert "1 of 2 classes copied by name (cat<-cat)" in caplog.text
    assert "1 start fresh: unicorn" in caplog.text


def test_without_names_the_predictor_is_reinitialised(tv_r18, tmp_path, caplog):
    _, path = tv_r18
    ckpt = load_checkpoint(path)
    ckpt.pop("extra")  # no class names in the checkpoint
    anonymous = str(tmp_path / "anonymous.pth")
    save_checkpoint(anonymous, ckpt)
    model, cfg = _target_model(path, 5)
    before = model.roi_heads.predictor.bbox_pred.weight.clone()
    with caplog.at_level(logging.WARNING):
        load_initial_weights(model, cfg, anonymous, [f"c{i}" for i in range(5)])
    assert torch.equal(model.roi_heads.predictor.bbox_pred.weight, before)
    for key in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"):
        assert f"roi_heads.predictor.{key}" in caplog.text
    assert "no class names to match" in caplog.text


def test_other_shape_mismatch_is_still_an_error(tv_r18):
    _, path = tv_r18
    cfg = config_from_dict(load_checkpoint(path)["config"])
    cfg.MODEL.ROI_HEADS.FC_DIM = 512
    model = build_detector(cfg)
    with pytest.raises(ValueError, match=r"tv18_resdet.pth.*roi_heads.box_head.fc1.weight"):
        load_initial_weights(model, cfg, path, coco_categories()[0])
