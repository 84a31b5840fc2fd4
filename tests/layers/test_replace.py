"""Replacing leaf modules around the same parameters and buffers (the training fast paths)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

from resdet.layers.replace import conv_sharing, replace_children, share_buffers


class TaggedConv2d(nn.Conv2d):
    """A subclass with ``nn.Conv2d``'s constructor, as the fast paths' convolutions are."""


def test_conv_sharing_holds_the_same_parameters_and_computes_the_same():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False).eval()
    new = conv_sharing(TaggedConv2d, conv)
    assert type(new) is TaggedConv2d and not new.training
    assert new.weight is conv.weight and new.bias is None
    assert all(t.device.type == "cpu" for t in new.state_dict().values())  # nothing left on meta
    assert list(new.state_dict()) == list(conv.state_dict())
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(new(x), conv(x))


def test_share_buffers_keeps_the_tensors_and_their_keys():
    norm = FrozenBatchNorm2d(3)
    norm.running_var.fill_(2.0)
    new = share_buffers(FrozenBatchNorm2d(3), norm)
    assert new.running_var is norm.running_var and new.weight is norm.weight
    assert list(new.state_dict()) == list(norm.state_dict())


def test_a_shared_child_is_replaced_once_and_stays_shared():
    conv = nn.Conv2d(2, 2, 1)
    a, b = nn.Sequential(conv, nn.ReLU()), nn.Sequential(nn.ReLU(), conv)
    model = nn.Sequential(a, b)
    names = replace_children(
        model, lambda name, m: conv_sharing(nn.Conv2d, m) if m is conv else None
    )
    assert names == ["0.0"]  # the first path to it; the second parent gets the same module
    assert model[0][0] is model[1][1] is not conv
    assert model[0][0].weight is conv.weight
    assert replace_children(model, lambda name, m: None) == []
