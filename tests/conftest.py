"""Suite-wide settings.

Tests use one intra-op thread: on a 2-core machine the tiny tensors of unit tests run
several times faster single-threaded (no OpenMP hand-offs), and seeded results do not
depend on the core count.
"""

import os
import tempfile

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Fast paths by the fixed CPU-capability rule, untimed: the suite's results must not depend on
# a measurement, and its many tiny models would each be timed once. The measured rule has its
# own tests (tests/test_accel_measure.py), which set the mode themselves. Inherited by the
# tools the tests start.
os.environ["RESDET_ACCEL_DECIDE"] = "isa"
os.environ["RESDET_CACHE_DIR"] = tempfile.mkdtemp(prefix="resdet-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
