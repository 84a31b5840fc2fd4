"""Replacing a model's leaf modules by others that share their parameters and buffers.

The fast paths for training (frozen BN folded on the fly, Winograd convolutions) change how a
convolution computes, not what it holds: the replacement module is built around the *same*
``nn.Parameter`` and buffer objects, so an optimizer built before keeps working and the
state-dict keys stay as they were. Building a new module (instead of changing the class of a
live one) keeps every module an ordinary instance of its class.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Type, TypeVar

import torch.nn as nn

__all__ = [
    "conv_sharing",
    "replace_children",
    "share_buffers",
    "switch_convs_",
    "unswitch_convs_",
]

ConvT = TypeVar("ConvT", bound=nn.Conv2d)
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def conv_sharing(cls: Type[ConvT], conv: nn.Conv2d) -> ConvT:
    """An instance of ``cls`` (``nn.Conv2d`` or a subclass with the same constructor) with
    ``conv``'s geometry that holds ``conv``'s own ``weight`` and ``bias`` parameters.

    The constructor runs on the meta device, so no weights are allocated and thrown away.
    """
    new = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device="meta",
    )
    new.weight, new.bias = conv.weight, conv.bias
    new.train(conv.training)
    return new


def share_buffers(new: ModuleT, old: nn.Module) -> ModuleT:
    """``new`` with ``old``'s buffer tensors registered under the same names; returns ``new``."""
    for name, buf in old.named_buffers(recurse=False):
        new.register_buffer(name, buf, persistent=name not in old._non_persistent_buffers_set)
    new.train(old.training)
    return new


def replace_children(
    model: nn.Module, replace: Callable[[str, nn.Module], Optional[nn.Module]]
) -> List[str]:
    """Walk every module of ``model`` once and swap in ``replace(name, child)`` for each child
    where it returns a module (``None`` keeps the child). Returns the full names replaced.

    A child shared by several parents is replaced once and the replacement shared the same way
    (resdet's C4 head runs the trunk's ``res5`` blocks).
    """
    done: Dict[int, nn.Module] = {}
    names = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if id(child) in done:
                setattr(parent, name, done[id(child)])
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            new = replace(full, child)
            if new is not None:
                done[id(child)] = new
                setattr(parent, name, new)
                names.append(full)
    return names


def switch_convs_(
    model: nn.Module, flag: str, applies: Callable[[nn.Conv2d], bool], cls: Type[nn.Conv2d]
) -> List[str]:
    """Switch the convolutions of ``model`` that ``applies`` to another kernel, in place;
    returns their names in module order. A convolution with an attribute ``flag`` of its own
    that is ``False`` (the on-the-fly folded convolution) gets it set; a plain ``nn.Conv2d``
    is replaced by ``cls`` (an ``nn.Conv2d`` subclass) around the same parameters."""
    flagged = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and getattr(m, flag, None) is False and applies(m):
            setattr(m, flag, True)
            flagged.append(name)

    def swap(name: str, m: nn.Module) -> Optional[nn.Module]:
        return conv_sharing(cls, m) if type(m) is nn.Conv2d and applies(m) else None

    switched = set(flagged + replace_children(model, swap))
    return [n for n, _ in model.named_modules() if n in switched]


def unswitch_convs_(model: nn.Module, flag: str, cls: Type[nn.Conv2d]) -> int:
    """Undo :func:`switch_convs_`; returns the number of convolutions restored."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not isinstance(m, cls) and getattr(m, flag, False):
            setattr(m, flag, False)  # a convolution with a flag of its own (see above)
            n += 1

    def swap(name: str, m: nn.Module) -> Optional[nn.Module]:
        return conv_sharing(nn.Conv2d, m) if type(m) is cls else None

    return n + len(replace_children(model, swap))
