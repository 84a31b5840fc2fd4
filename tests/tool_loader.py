"""``tools/<name>.py`` as a module, for tests that call a tool's ``main`` in-process.

The tools are scripts, not a package. ``tests/`` is on ``sys.path`` during the test session
(it holds the top-level ``conftest.py``), so any test can ``from tool_loader import load_tool``.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` afresh (module name ``_tool_<name>``)."""
    spec = importlib.util.spec_from_file_location(
        f"_tool_{name}", os.path.join(REPO, "tools", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
