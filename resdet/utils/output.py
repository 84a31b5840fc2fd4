"""Where a run writes: checked before any work is done, and write failures named plainly.

A run that cannot write its checkpoints should say so before training starts, not hours
later from inside torch's serializer ("unexpected pos ..."). :func:`check_output_dir` makes
sure ``OUTPUT_DIR`` is a folder that can be written (creating it), :func:`require_free_space`
compares the free space with the size of one checkpoint, :func:`atomic_write` writes a file
whole or not at all (checkpoints, ``last_checkpoint``), and :func:`output_error` turns the
``OSError`` of a failed write into an :class:`OutputError` whose message says what happened:

- ``no space left on device writing <path>``
- ``<folder> is read-only`` / ``<folder> is not writable (permission denied)``
- ``<path> is a file, not a folder``
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from typing import IO, Any, Callable, Iterator

__all__ = [
    "OutputError",
    "atomic_write",
    "check_output_dir",
    "estimate_checkpoint_bytes",
    "output_error",
    "require_free_space",
    "writing",
]


class OutputError(OSError):
    """An output file or folder cannot be written; the message names it and says why.

    Built as ``OutputError(errno, message)``; ``str()`` is the message alone.
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _first_file_on_path(path: str) -> str | None:
    """The first existing component of ``path`` that is not a folder (or None)."""
    current = os.path.abspath(path)
    parts = []
    while True:
        parts.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for p in reversed(parts):
        if os.path.exists(p) and not os.path.isdir(p):
            return p
    return None


def output_error(e: OSError, path: str, what: str = "writing") -> OutputError:
    """A plain-language :class:`OutputError` for ``e``, raised while ``what`` ``path``."""
    if isinstance(e, OutputError):
        return e
    folder = os.path.dirname(os.path.abspath(path)) or "."
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        text = f"no space left on device {what} {path}"
    elif code == errno.EROFS:
        text = f"{folder} is read-only (read-only file system); cannot write {path}"
    elif code in (errno.EACCES, errno.EPERM):
        text = f"{folder} is not writable (permission denied); cannot write {path}"
    elif code in (errno.ENOTDIR, errno.EEXIST) and (blocker := _first_file_on_path(path)):
        text = f"{blocker} is a file, not a folder; cannot write {path}"
    else:
        text = f"cannot write {path}: {(e.strerror or str(e)).lower()}"
    return OutputError(code or 0, text)


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block as the :class:`OutputError` of writing ``path``."""
    try:
        yield
    except OSError as e:
        raise output_error(e, path) from e


def check_output_dir(path: str, key: str = "OUTPUT_DIR") -> None:
    """Create ``path`` if needed and prove it can be written (a small probe file).

    Raises:
        OutputError: ``path`` (or a folder above it) is a file, the folder is read-only or
            not writable, or the device is full; the message names ``key`` and the path.
    """
    blocker = _first_file_on_path(path)
    if blocker is not None:
        raise OutputError(errno.ENOTDIR, f"{key} {path}: {blocker} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_probe.") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        err = output_error(e, os.path.join(path, "(probe file)"), "writing into")
        raise OutputError(err.errno or 0, f"{key} {path}: {err.strerror}") from e


def require_free_space(path: str, needed: int, what: str = "a checkpoint") -> None:
    """Raise :class:`OutputError` (ENOSPC) when ``path``'s device has less than ``needed``
    bytes free: a run that could never save ``what`` stops before it starts."""
    free = shutil.disk_usage(path).free
    if free < needed:
        raise OutputError(
            errno.ENOSPC,
            f"no space left on device for {what} in {path}: {free / 2**20:.1f} MB free, "
            f"{what} needs about {needed / 2**20:.1f} MB; free some space or choose another "
            "OUTPUT_DIR",
        )


def estimate_checkpoint_bytes(model, optimizer=None) -> int:
    """Bytes of a training checkpoint of ``model``: its state dict plus the optimizer's
    per-parameter state (SGD with momentum: one tensor per parameter; Adam(W): two)."""
    model_bytes = sum(
        t.numel() * t.element_size() for t in model.state_dict().values() if hasattr(t, "numel")
    )
    if optimizer is None:
        return model_bytes
    per_param = 2
    name = type(optimizer).__name__
    if name == "SGD":
        per_param = int(any(g.get("momentum", 0) for g in optimizer.param_groups))
    param_bytes = sum(
        p.numel() * p.element_size() for g in optimizer.param_groups for p in g["params"]
    )
    return model_bytes + per_param * param_bytes


class _RecordingFile:
    """A file object that remembers the ``OSError`` of a failed write: torch's serializer
    turns it into ``RuntimeError("... unexpected pos ...")``, losing the reason."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temp file next to ``path``, fsync it, rename it to ``path``.

    On any failure the temp file is removed and ``path`` keeps its previous content.

    Raises:
        OutputError: the folder cannot be created or written, or the device is full (the
            message names ``path``: "no space left on device writing <path>").
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
    except OSError as e:
        raise output_error(e, path) from e
    recorder: _RecordingFile | None = None
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates 0600 files; give the final file the usual umask-based mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(f.fileno(), 0o666 & ~umask)
            recorder = _RecordingFile(f)
            write(recorder)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = recorder.error if recorder is not None and recorder.error else e
        if isinstance(cause, OSError):
            raise output_error(cause, path) from e
        raise
    # Persist the rename itself (the directory entry), so a power cut cannot undo it.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
