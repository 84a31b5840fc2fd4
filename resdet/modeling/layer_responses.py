"""Layer responses of a ResNet: the standard deviation of each 3x3 layer's output (Fig. 7).

He et al. 2015 (Sec. 4.2, Fig. 7) measure "the outputs of each 3x3 layer, after BN and before
other nonlinearity (ReLU/addition)": residual functions turn out to have smaller responses than
the same layers of a plain net, and deeper ResNets smaller ones still.

What counts as a 3x3 layer here: every ``nn.Conv2d`` with a 3x3 kernel, in network order,
together with the norm layer that follows it (found by name: ``conv1`` -> ``bn1``, ``conv2`` ->
``bn2``, as :class:`~resdet.modeling.backbone.resnet.ResNet` names them). For a CIFAR net of
depth 6n+2 that is the stem conv plus the 6n convs of the 3n basic blocks: **6n+1 layers**
(19 for depth 20, 55 for 56). The stem is included because it is a 3x3 layer of the network and
the paper's x-axis counts the layers of the original net; it is the same layer in both nets
(no shortcut spans it). The fc layer is not a 3x3 layer. For ImageNet stems (7x7) and
bottleneck blocks only the 3x3 convs count.

The norm layer's output is read by a forward hook, i.e. after BN and before the ReLU or the
shortcut addition that the block applies next (the block's ReLUs are in place, so the hook
reduces the tensor at once, before it is overwritten).
"""

from __future__ import annotations

from typing import Iterable, List, Tuple

import torch
import torch.nn as nn

__all__ = ["layer_response_std", "three_by_three_layers"]


def three_by_three_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, norm module)`` of every 3x3 conv of ``model``, in network (registration) order.

    ``name`` is the conv's qualified name (``conv1``, ``layer1.0.conv2``, ...); the module is
    the norm layer applied to its output (its sibling ``bnK`` for ``convK``).

    Raises:
        ValueError: a 3x3 conv has no sibling norm layer of the expected name.
    """
    modules = dict(model.named_modules())
    out = []
    for name, module in modules.items():
        if not (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)):
            continue
        parent, _, leaf = name.rpartition(".")
        if not leaf.startswith("conv"):
            raise ValueError(f"3x3 conv '{name}': expected a name 'convK' to find its norm layer")
        norm_name = (parent + "." if parent else "") + "bn" + leaf[len("conv") :]
        if norm_name not in modules:
            raise ValueError(f"3x3 conv '{name}' has no norm layer '{norm_name}' after it")
        out.append((name, modules[norm_name]))
    return out


@torch.no_grad()
def layer_response_std(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu"
) -> Tuple[List[str], List[float]]:
    """Std of each 3x3 layer's response (after BN, before ReLU / addition) over ``batches``.

    The model runs in eval mode (BN with its running statistics, as at test time; the paper
    measures on the test set). The std is taken over every element of the layer's output
    ``[N, C, H, W]`` pooled over all batches (one number per layer, accumulated in float64).

    Args:
        model: a network whose 3x3 convs are followed by ``bnK`` siblings (any ResNet here).
        batches: normalised images ``float[N, 3, H, W]``.

    Returns:
        ``(names, stds)``: the conv names of :func:`three_by_three_layers` and one std each.

    Raises:
        ValueError: no batches, or no 3x3 layer in ``model``.
    """
    layers = three_by_three_layers(model)
    if not layers:
        raise ValueError("the model has no 3x3 conv layer")
    # Per layer: element count, sum and sum of squares (float64: 1e6+ elements per layer).
    stats = torch.zeros(len(layers), 3, dtype=torch.float64)

    def hook(index: int):
        def fn(_module: nn.Module, _inputs: Tuple, output: torch.Tensor) -> None:
            y = output.detach().double()
            stats[index] += torch.stack([y.new_tensor(y.numel()), y.sum(), (y * y).sum()]).cpu()

        return fn

    handles = [norm.register_forward_hook(hook(i)) for i, (_, norm) in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for images in batches:
            model(images.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    count, total, squares = stats.unbind(1)
    if not count[0] > 0:
        raise ValueError("layer_response_std: no images were given")
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0.0)
    return [n for n, _ in layers], var.sqrt().tolist()
