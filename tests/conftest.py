"""Suite-wide settings.

Tests use one intra-op thread: on a 2-core machine the tiny tensors of unit tests run
several times faster single-threaded (no OpenMP hand-offs), and seeded results do not
depend on the core count.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
