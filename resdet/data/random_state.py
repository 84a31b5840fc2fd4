"""Seeding albumentations pipelines correctly.

``A.Compose(seed=s)`` and ``Compose.set_random_seed(s)`` give *every* step its own generator
seeded with the same ``s``, so the steps' random draws are identical: the flip decision then
mirrors the resize or crop choice. resdet instead gives all steps one shared generator pair.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence, Union

import albumentations as A
import numpy as np


def seed_compose(compose: A.Compose, seed: Optional[Union[int, Sequence[int]]]) -> None:
    """Give every step of ``compose`` one shared numpy + python generator pair from ``seed``.

    ``seed`` may be an int, a sequence of ints (e.g. ``(base_seed, sample_position)``) or
    None for fresh entropy.
    """
    seq = np.random.SeedSequence(seed)
    compose.set_random_state(
        np.random.default_rng(seq), random.Random(int(seq.generate_state(1)[0]))
    )
