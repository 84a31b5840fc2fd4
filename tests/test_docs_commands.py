"""Every command line the documentation shows must work (so the docs cannot drift again).

The rule: each line of a fenced code block in README.md, BENCHMARKS.md, MODEL_ZOO.md,
datasets/README.md and docs/*.md that runs ``python tools/<tool>.py``, ``torchrun ...
tools/<tool>.py`` or ``make <target>`` (backslash continuations joined, ``#`` comments
dropped) is checked:

1. the tool exists and its own argument parser accepts the arguments, exactly as typed
   (parsed in-process: the tool's ``main`` stops right after parsing);
2. a ``--config`` file of the repository (``configs/...``) exists and loads with the line's
   ``KEY VALUE`` overrides (so a mistyped key, an odd number of overrides or a flag in the
   wrong place fails here); a config an earlier step writes (``weights/x.yaml`` from
   ``convert_weights.py``, ``output/run/config.yaml``) or a placeholder (``C``) is not here, so
   the overrides are checked on the defaults; the demo's ``--det-opts`` / ``--cls-opts`` load
   onto the demo's configs;
3. the cheap ones run for real: ``tools/model_stats.py`` lines (no data needed);
4. ``make`` targets exist in the Makefile.

Commands that need real datasets, weights or hours (training on COCO, the demo) are checked
by (1)-(2) only; the tools themselves are exercised on small generated data by their own
tests and by tests/hostile/. Every tool also answers ``--help``.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
from typing import List, Tuple

import pytest
from tool_loader import REPO, load_tool

from resdet.config import load_config

DOCS = ["README.md", "BENCHMARKS.md", "MODEL_ZOO.md", "datasets/README.md",
        *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]  # fmt: skip
DEMO_CONFIGS = {
    "det_opts": "configs/shapes_r18_fpn.yaml",
    "cls_opts": "configs/shapes_cls_r18.yaml",
}
RUN_FOR_REAL = ("model_stats",)


def doc_commands() -> List[Tuple[str, int, List[str]]]:
    """(doc file, line number, argv) of every command line in a fenced block."""
    found = []
    for doc in DOCS:
        path = doc if os.path.isabs(doc) else os.path.join(REPO, doc)
        if not os.path.isfile(path):
            continue
        in_block, pending, start = False, "", 0
        for number, line in enumerate(open(path, encoding="utf-8"), 1):
            if line.lstrip().startswith("```"):
                in_block, pending = not in_block, ""
                continue
            if not in_block:
                continue
            text = line.rstrip("\n")
            if not pending:
                start = number
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
                continue
            line_text = pending + text
            if line_text.split()[:1] not in (["python"], ["torchrun"], ["make"]):
                pending = ""  # prose or a diagram in a code block (quotes need not pair)
                continue
            words = shlex.split(line_text, comments=True)
            pending = ""
            # Tool and make commands; ``python -c`` / ``python -m`` lines run no tool.
            tool = any(w.endswith(".py") for w in words)
            if words and (words[0] == "make" or (words[0] in ("python", "torchrun") and tool)):
                found.append((os.path.relpath(path, REPO), start, words))
    return found


COMMANDS = doc_commands()


class _Parsed(Exception):
    """Raised right after a tool's parser accepted the arguments."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


@pytest.fixture
def stop_after_parsing(monkeypatch):
    for name in ("parse_args", "parse_intermixed_args"):
        original = getattr(argparse.ArgumentParser, name)

        def parse(self, args=None, namespace=None, _original=original):
            raise _Parsed(_original(self, args, namespace))

        monkeypatch.setattr(argparse.ArgumentParser, name, parse)


def _tool_and_args(words: List[str]) -> Tuple[str, List[str]]:
    script = next(i for i, w in enumerate(words) if w.endswith(".py"))
    match = re.fullmatch(r"tools/(\w+)\.py", words[script])
    assert match, f"not a tools/ script: {words[script]}"
    return match.group(1), words[script + 1 :]


def test_docs_show_commands() -> None:
    assert len(COMMANDS) >= 40  # the extraction itself works
    assert {w[0] for _, _, w in COMMANDS} == {"python", "torchrun", "make"}


@pytest.mark.parametrize("doc,line,words", COMMANDS, ids=[f"{d}:{n}" for d, n, _ in COMMANDS])
def test_doc_command(doc, line, words, stop_after_parsing, capsys) -> None:
    if words[0] == "make":
        makefile = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
        for target in words[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make {target}"
        return
    tool, args = _tool_and_args(words)
    assert os.path.isfile(os.path.join(REPO, "tools", f"{tool}.py")), tool
    with pytest.raises(_Parsed) as parsed:
        load_tool(tool).main(args)
    ns = vars(parsed.value.namespace)
    if ns.get("config"):
        config = os.path.join(REPO, ns["config"])
        if ns["config"].startswith("configs/") or os.path.isfile(config):
            load_config(config, ns.get("opts") or [])
        else:  # written by an earlier step of the docs, or a placeholder
            load_config(None, ns.get("opts") or [])
    for key, config in DEMO_CONFIGS.items():
        if ns.get(key):
            load_config(os.path.join(REPO, config), ns[key])


@pytest.mark.parametrize(
    "doc,line,words",
    [c for c in COMMANDS if c[2][0] == "python" and _tool_and_args(c[2])[0] in RUN_FOR_REAL],
)
def test_cheap_doc_commands_run(doc, line, words, monkeypatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    tool, args = _tool_and_args(words)
    assert load_tool(tool).main(args) == 0, capsys.readouterr().err[-2000:]
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize(
    "tool", sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "tools", "*.py")))
)
def test_every_tool_has_help(tool, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        load_tool(tool).main(["--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out
