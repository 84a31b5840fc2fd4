"""Logging set-up for tools: console on every rank, ``log.txt`` from rank 0 only.

Library modules only call ``logging.getLogger(__name__)``; the tools call
:func:`setup_logging` once. Console output goes through ``tqdm.write`` so log lines do not
tear the progress bar.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["close_logging", "setup_logging"]

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"
_MARK = "_resdet_handler"  # tags our handlers so a second call replaces, not duplicates, them


class _TqdmHandler(logging.StreamHandler):
    """A stderr handler that prints above an active tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # never let logging crash training
            self.handleError(record)


class _LogFileHandler(logging.FileHandler):
    """``log.txt``: a write that fails (a full disk, the folder gone read-only) is reported
    once, in one line, and the file is given up; the console keeps logging. (The default
    prints a traceback for every later record.)"""

    def handleError(self, record: logging.LogRecord) -> None:
        from resdet.utils.cli import format_error

        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            print(
                f"warning: cannot write the log file {self.baseFilename} "
                f"({format_error(error)}); logging to the console only",
                file=sys.stderr,
            )
            self.emit = lambda record: None  # type: ignore[method-assign]
            return
        super().handleError(record)


def setup_logging(
    output_dir: str | None = None,
    rank: int = 0,
    level: int = logging.INFO,
    name: str = "resdet",
) -> logging.Logger:
    """Configure the ``name`` logger (``resdet`` covers every library module) and ``__main__``.

    Args:
        output_dir: directory of ``log.txt`` (appended to, so a resumed run keeps the history);
            None writes no file.
        rank: this process's rank; rank 0 logs at ``level`` and writes the file, the others
            only print warnings and errors to the console, prefixed with their rank.
        level: logging level of rank 0.

    Returns:
        the configured ``name`` logger. Calling again replaces the handlers it added before.
    """
    loggers = [logging.getLogger(name), logging.getLogger("__main__")]
    fmt = logging.Formatter(_FORMAT if rank == 0 else f"[rank{rank}] " + _FORMAT, datefmt=_DATEFMT)
    console = _TqdmHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(level if rank == 0 else logging.WARNING)
    setattr(console, _MARK, True)
    handlers = [console]
    if output_dir and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = _LogFileHandler(os.path.join(output_dir, "log.txt"), encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
        file_handler.setLevel(level)
        setattr(file_handler, _MARK, True)
        handlers.append(file_handler)
    close_logging(name)
    for lg in loggers:
        lg.setLevel(level)
        for h in handlers:
            lg.addHandler(h)
    return loggers[0]


def close_logging(name: str = "resdet") -> None:
    """Remove and close the handlers :func:`setup_logging` added (e.g. at the end of a run
    inside a longer-lived process such as a test session)."""
    for lg in (logging.getLogger(name), logging.getLogger("__main__")):
        for h in [h for h in lg.handlers if getattr(h, _MARK, False)]:
            lg.removeHandler(h)
            h.close()
