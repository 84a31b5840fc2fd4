"""Box coder: encode/decode round trip, class-specific decoding, the exp clamp."""

from __future__ import annotations

import math

import torch

from resdet.modeling.detection.box_coder import BoxCoder


def _random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 100 + 4
    return torch.cat([xy, xy + wh], dim=1)


def test_round_trip_with_head_weights() -> None:
    g = torch.Generator().manual_seed(0)
    ref, target = _random_boxes(64, g), _random_boxes(64, g)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(ref, target)
    assert deltas.shape == (64, 4)
    torch.testing.assert_close(coder.decode(deltas, ref), target, atol=1e-3, rtol=1e-5)
    # Identity: zero deltas for a box encoded against itself.
    torch.testing.assert_close(coder.encode(ref, ref), torch.zeros(64, 4))


def test_weights_scale_the_deltas() -> None:
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    target = torch.tensor([[5.0, 0.0, 15.0, 40.0]])
    d1 = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(ref, target)
    # centre moves +5 in x (w=10) and +10 in y (h=20); h doubles, w unchanged.
    torch.testing.assert_close(d1, torch.tensor([[0.5, 0.5, 0.0, math.log(2.0)]]))
    d2 = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(ref, target)
    torch.testing.assert_close(d2, d1 * torch.tensor([10.0, 10.0, 5.0, 5.0]))


def test_class_specific_decode() -> None:
    g = torch.Generator().manual_seed(1)
    k = 3
    ref = _random_boxes(10, g)
    targets = [_random_boxes(10, g) for _ in range(k)]
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = torch.cat([coder.encode(ref, t) for t in targets], dim=1)
    out = coder.decode(deltas, ref)
    assert out.shape == (10, 4 * k)
    for j, t in enumerate(targets):
        torch.testing.assert_close(out[:, 4 * j : 4 * j + 4], t, atol=1e-3, rtol=1e-5)


def test_clamp_prevents_overflow() -> None:
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    coder = BoxCoder()
    out = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), ref)
    assert torch.isfinite(out).all()
    # exp(log(1000 / 16)) * 16 = 1000 pixels at most.
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(1000.0))
    # Half precision deltas decode in float32.
    assert coder.decode(torch.zeros(1, 4, dtype=torch.float16), ref).dtype == torch.float32
