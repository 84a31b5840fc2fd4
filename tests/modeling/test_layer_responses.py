"""The layer-response hook of Fig. 7: one std per 3x3 layer, read after BN and before the
ReLU / shortcut addition, pooled over batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resdet.modeling.backbone.resnet import ResNet
from resdet.modeling.layer_responses import layer_response_std, three_by_three_layers


@pytest.mark.parametrize("depth", [8, 20, 56])
@pytest.mark.parametrize("plain", [True, False])
def test_one_value_per_3x3_layer(depth, plain):
    torch.manual_seed(0)
    model = ResNet(depth, stem="cifar", plain=plain, shortcut="A", num_classes=8)
    names, stds = layer_response_std(model, [torch.randn(2, 3, 32, 32)])
    n = (depth - 2) // 6
    # The stem conv plus two 3x3 convs in each of the 3n basic blocks: 6n + 1 (19 for
    # depth 20, 55 for 56).
    assert len(names) == len(stds) == 6 * n + 1 == depth - 1
    assert (
        names[0] == "conv1"
        and names[1] == "layer1.0.conv1"
        and names[-1] == f"layer3.{n - 1}.conv2"
    )
    assert all(s > 0 for s in stds)


def test_bottleneck_counts_only_its_3x3_convs():
    model = ResNet(50, width=8, num_classes=0, out_features=["res5"])
    layers = three_by_three_layers(model)
    # The 7x7 stem and the 1x1 convs are not 3x3 layers: one per bottleneck block, 3+4+6+3.
    assert len(layers) == 16
    assert all(name.endswith("conv2") for name, _ in layers)
    assert layers[0][1] is model.layer1[0].bn2


def test_values_are_after_bn_before_addition_and_pooled_over_batches():
    torch.manual_seed(0)
    model = ResNet(8, stem="cifar", shortcut="A", num_classes=8)
    model.train()
    for _ in range(3):  # non-trivial running statistics, then measure in eval mode
        model(torch.randn(4, 3, 32, 32) * 2 + 0.5)
    x = torch.randn(6, 3, 32, 32)
    names, stds = layer_response_std(model, [x[:2], x[2:]])
    assert model.training, "the model's mode must be restored"

    model.eval()
    with torch.no_grad():
        stem = model.bn1(model.conv1(x))
        block = model.layer1[0]
        h = F.relu(stem)
        mid = block.bn1(block.conv1(h))
        out = block.bn2(block.conv2(F.relu(mid)))  # before "+ h" and the ReLU
    expected = [t.double().std(unbiased=False).item() for t in (stem, mid, out)]
    assert names[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert stds[:3] == pytest.approx(expected, rel=1e-6)
    # After the addition the std would differ: the hook did not read the block's output.
    after_add = F.relu(out + h).double().std(unbiased=False).item()
    assert abs(after_add - stds[2]) > 1e-3

    # Batches pool into one statistic: the same as one batch of all images.
    _, one_batch = layer_response_std(model, [x])
    assert stds == pytest.approx(one_batch, rel=1e-9)


def test_errors():
    model = ResNet(8, stem="cifar", num_classes=8)
    with pytest.raises(ValueError, match="no images"):
        layer_response_std(model, [])
    with pytest.raises(ValueError, match="no 3x3 conv"):
        layer_response_std(torch.nn.Linear(3, 3), [torch.randn(1, 3)])
