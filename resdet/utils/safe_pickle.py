"""Loading pickles that may come from strangers, without running their code.

``pickle.load`` calls whatever global the file names, so a downloaded ``.pkl`` can run
``os.system`` on load. resdet reads two kinds of pickle from outside: CIFAR-10 batches and
MSRA / detectron2 ``.pkl`` weights (dicts of numpy arrays, often written by Python 2, hence
``encoding="latin1"``). Both only need containers and numpy arrays, so :func:`safe_load_pickle`
resolves exactly those globals and refuses every other one with :class:`UnsafePickleError`.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import importlib
import logging
import os
import pickle
from typing import IO, Any, Tuple, Union

logger = logging.getLogger(__name__)

__all__ = ["UnsafePickleError", "safe_load_pickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing it names was called."""


_LATIN1_NAMES = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"})


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` restricted to the latin1 round-trip pickle uses.

    Python 3 writes ``bytes`` (e.g. an array's raw buffer) at protocol <= 2 as
    ``_codecs.encode(text, "latin1")``. The real function can reach any registered codec, so
    only the encoding pickle itself emits is accepted.
    """
    if encoding.lower() not in _LATIN1_NAMES:
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, "latin1", errors)


# (module, name) -> where to import it from. Array reconstruction lives in ``numpy._core``
# since numpy 2 and in ``numpy.core`` before; older files name the latter, so both spellings
# are accepted and resolved to whichever the installed numpy has (``numpy.core`` warns on 2.x).
_NUMPY_FUNCS = {
    ("multiarray", "_reconstruct"),  # ndarray.__reduce__ at protocol <= 4
    ("multiarray", "scalar"),  # numpy scalars such as np.float32(1.0)
    ("numeric", "_frombuffer"),  # ndarray.__reduce_ex__ at protocol 5 (a buffer, no code)
}
_ALLOWED_BUILTINS = {"set", "frozenset", "slice", "complex", "bytearray", "range"}


def _allowed(module: str, name: str) -> bool:
    if module == "builtins":
        return name in _ALLOWED_BUILTINS
    if module == "collections":
        return name == "OrderedDict"
    if module == "numpy":
        return name in ("ndarray", "dtype")
    if module == "_codecs":
        return name == "encode"
    for prefix in ("numpy.core.", "numpy._core."):
        if module.startswith(prefix):
            return (module[len(prefix) :], name) in _NUMPY_FUNCS
    return False


def _resolve(module: str, name: str) -> Any:
    """Import an allow-listed global (only called after :func:`_allowed` said yes)."""
    if module == "_codecs":
        return _latin1_encode
    if module == "collections":
        return collections.OrderedDict
    if module.startswith("numpy.core."):
        try:
            return getattr(importlib.import_module("numpy._core." + module[11:]), name)
        except ImportError:  # numpy < 1.26 has no numpy._core
            pass
    if module.startswith("numpy._core."):
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:
            return getattr(importlib.import_module("numpy.core." + module[12:]), name)
    return getattr(importlib.import_module(module), name)


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` only hands out containers and numpy reconstruction."""

    def __init__(self, file: IO[bytes], source: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles say "__builtin__.set" / "copy_reg..."; map to Python 3 names first
        # (the base class would do this inside find_class, which is overridden here).
        key: Tuple[str, str] = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module, name = key
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if not _allowed(module, name):
            raise UnsafePickleError(
                f"{self._source}: refusing to load global '{module}.{name}': only plain "
                "containers and numpy arrays are allowed in this pickle. If the file is trusted "
                "and really needs it, convert it to a plain dict of numpy arrays first."
            )
        return _resolve(module, name)


def safe_load_pickle(
    path_or_file: Union[str, os.PathLike[str], IO[bytes]], encoding: str = "latin1"
) -> object:
    """Unpickle a file that may only contain containers and numpy arrays.

    Args:
        path_or_file: a path, or a binary file object opened for reading.
        encoding: how Python 2 ``str`` objects are decoded. ``"latin1"`` (the default) is what
            numpy needs to rebuild arrays pickled by Python 2, e.g. CIFAR-10 batches and
            MSRA ResNet ``.pkl`` weights; their keys then arrive as ``str`` (or ``bytes`` for
            files written as Python 3 bytes, like CIFAR's ``b"data"``).

    Returns:
        The unpickled object: dicts, lists, tuples, sets, scalars, strings and
        ``numpy.ndarray`` / numpy scalars.

    Raises:
        UnsafePickleError: the pickle names any other global (e.g. ``posix.system``); the
            message names the file and the global. Nothing the pickle references is called.
        pickle.UnpicklingError: the file is truncated or not a pickle (message names the file).
        FileNotFoundError: the path does not exist.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        source = os.fspath(path_or_file)
        with open(source, "rb") as f:
            return _load(f, source, encoding)
    source = str(getattr(path_or_file, "name", "<pickle stream>"))
    return _load(path_or_file, source, encoding)


def _load(f: IO[bytes], source: str, encoding: str) -> object:
    try:
        return _RestrictedUnpickler(f, source, encoding).load()
    except UnsafePickleError as e:
        if source in str(e):
            raise
        # e.g. the _codecs.encode guard, which does not know the file name
        raise UnsafePickleError(f"{source}: {e}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError) as e:
        raise pickle.UnpicklingError(
            f"{source}: not a readable pickle ({type(e).__name__}: {e})"
        ) from e
