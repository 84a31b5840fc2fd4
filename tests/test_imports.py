"""The package's imports run one way: no circle, and no import from a lower layer to a higher one.

The checker reads every ``resdet/**/*.py`` with ``ast`` (imports inside functions count too: a
deferred import is still a dependency). ``LAYERS`` lists every package of ``resdet``, lowest
first; a module may import modules of its own layer or of lower ones only, and no import
circle exists (within a layer either). The programs in ``resdet_apps`` sit above the whole
library, which never imports them. The order is the one ``docs/ARCHITECTURE.md`` draws.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Optional, Sequence, Set

import resdet

PACKAGE_ROOT = os.path.dirname(os.path.abspath(resdet.__file__))

# Lowest first. Each entry: module-name prefixes that form one layer.
LAYERS: List[Sequence[str]] = [
    # foundations: typed config, name registry, ImageList, logging / output / pickles / CLI
    ("resdet.config", "resdet.registry", "resdet.structures", "resdet.utils"),
    ("resdet.layers",),  # leaf kernels: fused conv, Winograd, RoIAlign, norms, folding
    ("resdet.modeling",),  # modules that say how they fuse (fuse() methods)
    ("resdet.accel",),  # decides and applies the fast paths for training and inference
    ("resdet.data",),  # records, loaders of both tasks, sources, transforms, image decoding
    ("resdet.evaluation",),  # COCO / VOC scoring, reports
    ("resdet.engine",),  # run skeleton + task builders, train loop, hooks, checkpoints
    ("resdet.export", "resdet.predictor"),  # weights in and out; the inference API
    ("resdet.media",),  # images, folders, globs and videos through the Predictor
]


def module_names(root: str, package: str) -> Dict[str, str]:
    """``{dotted module name: file path}`` of every ``.py`` under ``root`` (a package named
    ``package``); a package's ``__init__.py`` is named as the package."""
    names = {}
    for folder, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, f), root)[: -len(".py")].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            names[".".join([package, *rel])] = os.path.join(folder, f)
    return names


def _imported(node: ast.AST, module: str, is_package: bool, known: Set[str]) -> List[str]:
    """The known modules an ``import`` / ``from ... import`` node names."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            parent = parts if is_package else parts[:-1]
            parent = parent[: len(parent) - (node.level - 1)]
            base = ".".join(parent + ([base] if base else []))
        # ``from pkg import sub`` imports the submodule ``pkg.sub`` where there is one.
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
        return []
    found = []
    for t in targets:
        while t and t not in known:  # ``import a.b.c`` where only ``a.b`` is a module file
            t = t.rpartition(".")[0]
        if t:
            found.append(t)
    return found


def import_graph(root: str, package: str) -> Dict[str, Set[str]]:
    """``{module: modules of the package it imports}``, from the source, without importing it."""
    files = module_names(root, package)
    known = set(files)
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        is_package = path.endswith("__init__.py")
        deps: Set[str] = set()
        for node in ast.walk(tree):
            deps.update(_imported(node, name, is_package, known))
        deps.discard(name)
        graph[name] = deps
    return graph


def layer_of(module: str, layers: Sequence[Sequence[str]]) -> Optional[int]:
    for i, prefixes in enumerate(layers):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def upward_imports(graph: Dict[str, Set[str]], layers: Sequence[Sequence[str]]) -> List[str]:
    """``"a -> b"`` for every import of a module in a listed layer from a higher layer or from
    a package no layer lists."""
    bad = []
    for module, deps in sorted(graph.items()):
        mine = layer_of(module, layers)
        if mine is None:
            continue
        for dep in sorted(deps):
            theirs = layer_of(dep, layers)
            if theirs is None or theirs > mine:
                bad.append(f"{module} -> {dep}")
    return bad


def find_cycle(graph: Dict[str, Set[str]], nodes: Set[str]) -> List[str]:
    """One import circle among ``nodes`` (``[a, b, ..., a]``), or ``[]`` when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(n: str) -> List[str]:
        state[n] = 1
        path.append(n)
        for d in sorted(graph.get(n, ()) & nodes):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state:
                cycle = visit(d)
                if cycle:
                    return cycle
        state[n] = 2
        path.pop()
        return []

    for n in sorted(nodes):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return []


def _write(root, files: Dict[str, str]) -> str:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def test_checker_finds_circles_and_upward_imports(tmp_path):
    root = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "from pkg.low import b\n",
            "low/b.py": "def f():\n    from .a import x\n    import pkg.high.c\n",
            "high/__init__.py": "",
            "high/c.py": "import pkg.low.a as a\nfrom pkg import other\n",
            "other.py": "import os\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.low.a"] == {"pkg.low.b"}
    assert graph["pkg.low.b"] == {"pkg.low.a", "pkg.high.c"}  # imports inside functions count
    assert graph["pkg.high.c"] == {"pkg.low.a", "pkg.other"}
    layers = [("pkg.low",), ("pkg.high",)]
    assert upward_imports(graph, layers) == ["pkg.high.c -> pkg.other", "pkg.low.b -> pkg.high.c"]
    assert find_cycle(graph, {"pkg.low.a", "pkg.low.b"}) == ["pkg.low.a", "pkg.low.b", "pkg.low.a"]
    assert find_cycle(graph, set(graph)) == ["pkg.high.c", "pkg.low.a", "pkg.low.b", "pkg.high.c"]
    assert find_cycle(graph, {"pkg.high.c", "pkg.low.a", "pkg.other"}) == []


def test_listed_layers_import_only_downwards_and_have_no_circle():
    graph = import_graph(PACKAGE_ROOT, "resdet")
    assert "resdet.layers.fuse" in graph and "resdet.accel" in graph
    assert upward_imports(graph, LAYERS) == []
    listed = {m for m in graph if layer_of(m, LAYERS) is not None}
    assert find_cycle(graph, listed) == []


def test_every_module_has_a_layer_and_the_library_never_imports_the_programs():
    graph = import_graph(PACKAGE_ROOT, "resdet")
    unlisted = [m for m in graph if m != "resdet" and layer_of(m, LAYERS) is None]
    assert unlisted == [], "give these modules a layer in LAYERS (and docs/ARCHITECTURE.md)"
    programs = []
    for name, path in module_names(PACKAGE_ROOT, "resdet").items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            programs += [f"{name} -> {n}" for n in names if n.split(".")[0] == "resdet_apps"]
    assert programs == []


def test_layers_import_nothing_from_modeling_or_engine():
    graph = import_graph(PACKAGE_ROOT, "resdet")
    layers = {m: d for m, d in graph.items() if m.startswith("resdet.layers.")}
    assert "resdet.layers.fold" in layers
    above = ("resdet.modeling", "resdet.engine", "resdet.accel")
    assert [f"{m} -> {d}" for m, ds in layers.items() for d in ds if d.startswith(above)] == []


MAX_LINES = 400


def test_no_python_file_of_the_project_is_over_400_lines():
    # A file a reader takes in at once: over this, split it by what it does (docs/ARCHITECTURE).
    root = os.path.dirname(PACKAGE_ROOT)
    long = {}
    for folder in ("resdet", "resdet_apps", "tools"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    with open(path, encoding="utf-8") as f:
                        n = sum(1 for _ in f)
                    if n > MAX_LINES:
                        long[os.path.relpath(path, root)] = n
    assert not long, f"over {MAX_LINES} lines: {long}"
