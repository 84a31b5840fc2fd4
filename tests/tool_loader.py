"""``tools/<name>.py`` as a module, for tests that call a tool's ``main`` in-process
(:func:`load_tool`), or as a program in a subprocess (:func:`run_tool`).

The tools are scripts, not a package. ``tests/`` is on ``sys.path`` during the test session
(it holds the top-level ``conftest.py``), so any test can ``from tool_loader import load_tool``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny R-FPN detector config the end-to-end tool tests train (a _BASE_ for their own).
TINY_FPN = os.path.join(REPO, "tests", "configs", "tiny_fpn.yaml")


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` afresh (module name ``_tool_<name>``)."""
    spec = importlib.util.spec_from_file_location(
        f"_tool_{name}", os.path.join(REPO, "tools", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(
    args: List[str], env: Optional[Dict[str, str]] = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python <args>`` (``args[0]`` a path like ``tools/train_det.py``) run from the repository
    root, output captured as text, on one OpenMP thread, in ``env`` (default: this process's).

    ``PYTHONPATH`` is prefixed with the repository, so the tool imports this tree's resdet,
    not another copy the virtualenv may have installed.
    """
    env = dict(os.environ if env is None else env)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
