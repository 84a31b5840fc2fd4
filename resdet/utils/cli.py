"""How every ``tools/*.py`` command ends on an expected error: one line, a non-zero exit.

    @tool_entry
    def main(argv: list[str] | None = None) -> int:
        ...

The project's expected errors -- every exception class defined in resdet (``ConfigError``,
``DatasetError``, ``ConversionError``, ``UnsafePickleError``, ``CheckpointError``,
``OutputError``, ``ResultsError``, ...), ``OSError`` (a file that cannot be read or written)
and ``FloatingPointError`` (a NaN loss) -- become ``error: <file>: <problem>`` on stderr and
exit status 2. Anything else is a bug and keeps its traceback. ``--debug`` anywhere on the
command line (or ``RESDET_DEBUG=1``) prints the traceback of expected errors too.

The tools' shared command-line pieces live here too: :func:`tool_parser` (the parser a tool's
docstring describes) and :func:`add_threads_argument` / :func:`threads_override` (``--threads``
as the ``ACCEL.THREADS`` override).

This module imports nothing heavy, so a tool that does not need torch starts quickly.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import traceback
from typing import Callable, List, Optional

__all__ = [
    "EXIT_ERROR",
    "add_threads_argument",
    "describe_os_error",
    "format_error",
    "is_expected",
    "threads_override",
    "tool_entry",
    "tool_parser",
]

EXIT_ERROR = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "RESDET_DEBUG"

_OS_PROBLEMS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists, and not as a folder",
    errno.ENOENT: "no such file or folder",
}


def describe_os_error(e: OSError) -> str:
    """``<file>: <problem>`` for an ``OSError`` (``[Errno 28] ...: 'x'`` becomes readable)."""
    problem = _OS_PROBLEMS.get(e.errno or -1) or (e.strerror or str(e)).lower()
    if e.filename is None:
        return str(e) if not e.strerror else problem
    target = os.fsdecode(e.filename)
    if e.filename2 is not None:
        target += f" -> {os.fsdecode(e.filename2)}"
    return f"{target}: {problem}"


def is_expected(e: BaseException) -> bool:
    """An error the user can fix from its message (bad input, config, files), not a bug."""
    if isinstance(e, (OSError, FloatingPointError)):
        return True
    return any(c.__module__.split(".")[0] == "resdet" for c in type(e).__mro__)


def format_error(e: BaseException) -> str:
    """The one-line message of an expected error (without the ``error:`` prefix)."""
    if isinstance(e, OSError) and type(e).__module__.split(".")[0] != "resdet":
        text = describe_os_error(e)
    else:
        text = str(e)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "; ".join(lines) or type(e).__name__


def _debug_requested(argv: List[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def tool_entry(main: Callable[[Optional[List[str]]], Optional[int]]) -> Callable[..., int]:
    """Wrap a tool's ``main(argv)``: expected errors become one ``error:`` line and exit 2.

    ``argv`` defaults to ``sys.argv[1:]``; ``--debug`` is taken out of it before ``main``
    parses it, so every tool accepts it without declaring it.
    """

    @functools.wraps(main)
    def wrapper(argv: Optional[List[str]] = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = _debug_requested(args)
        args = [a for a in args if a != DEBUG_FLAG]
        try:
            return int(main(args) or 0)
        except Exception as e:
            if not is_expected(e):
                raise
            if debug:
                traceback.print_exc()
            print(f"error: {format_error(e)}", file=sys.stderr)
            return EXIT_ERROR

    return wrapper


def tool_parser(doc: str, *, epilog: bool = False) -> argparse.ArgumentParser:
    """The parser of a tool whose module docstring is ``doc``: its first line is the
    description; with ``epilog`` the rest (the usage examples) follows the options as written.
    """
    first, _, rest = doc.partition("\n")
    return argparse.ArgumentParser(
        description=first,
        epilog=rest if epilog else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: the intra-op thread count, given to the config as ``ACCEL.THREADS``
    (see :func:`threads_override`)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads (ACCEL.THREADS; 0: one per core)",
    )


def threads_override(threads: Optional[int]) -> List[str]:
    """``--threads N`` as the ``KEY VALUE`` override ``["ACCEL.THREADS", "N"]``; none without
    it. Appended after the other overrides, so the flag wins over an ``ACCEL.THREADS`` pair."""
    return [] if threads is None else ["ACCEL.THREADS", str(threads)]
