"""The restricted unpickler: numpy arrays and containers load, anything callable is refused."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct

import numpy as np
import pytest

from resdet.utils.safe_pickle import UnsafePickleError, safe_load_pickle


class _RunsShell:
    """Unpickling this with plain ``pickle.load`` would run a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Py2Pickler(pickle._Pickler):
    """Writes ``str`` and ``bytes`` with the Python 2 ``BINSTRING`` opcode, as Python 2 did.

    Arrays pickled by Python 2 carry their buffer as a Python 2 ``str``; loading them needs
    ``encoding="latin1"``, which is what the MSRA ``.pkl`` weights and CIFAR batches require.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _weights() -> dict:
    rng = np.random.default_rng(0)
    return {
        "conv1_w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "res2_bn_s": rng.standard_normal(4).astype(np.float64),
        "ids": np.arange(5, dtype=np.int64),
        "bytes_img": rng.integers(0, 256, (2, 3), dtype=np.uint8),
    }


def _assert_same_arrays(loaded: dict, expected: dict) -> None:
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype, key
        np.testing.assert_array_equal(loaded[key], value)


def test_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": _RunsShell(f"touch {marker}")}, protocol=2))

    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(path)

    assert not marker.exists(), "the pickled command was executed"
    message = str(info.value)
    assert f"{os.system.__module__}.system" in message  # "posix.system" on Linux
    assert str(path) in message
    assert isinstance(info.value, pickle.UnpicklingError)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_refuses_builtins_eval_at_every_protocol(tmp_path, protocol):
    class _Eval:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    path = tmp_path / "eval.pkl"
    path.write_bytes(pickle.dumps([_Eval()], protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        safe_load_pickle(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_loads_dict_of_numpy_arrays(tmp_path, protocol):
    weights = _weights()
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"blobs": weights, "scale": np.float32(0.5)}, protocol=protocol))
    loaded = safe_load_pickle(path)
    _assert_same_arrays(loaded["blobs"], weights)
    assert loaded["scale"] == np.float32(0.5) and loaded["scale"].dtype == np.float32


def test_loads_python2_style_pickle_with_latin1_strings(tmp_path):
    weights = _weights()
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({"model": weights, "__author__": "MSRA"})
    raw = buf.getvalue()
    # Python 2 numpy names its reconstructor under numpy.core, not numpy._core.
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    path = tmp_path / "py2.pkl"
    path.write_bytes(raw)

    loaded = safe_load_pickle(path, encoding="latin1")
    assert loaded["__author__"] == "MSRA"
    _assert_same_arrays(loaded["model"], weights)


def test_containers_and_python2_builtin_names(tmp_path):
    obj = {
        "od": collections.OrderedDict([("b", 1), ("a", 2)]),
        "s": {1, 2},
        "fs": frozenset({"x"}),
        "sl": slice(1, 5, 2),
        "c": complex(1, -2),
        "t": (1.5, None, True),
    }
    loaded = safe_load_pickle(io.BytesIO(pickle.dumps(obj, protocol=2)))
    assert loaded == obj
    assert list(loaded["od"]) == ["b", "a"]
    # What Python 2 wrote for set([1]): the module is "__builtin__".
    py2_set = b"c__builtin__\nset\n((lp0\nI1\natp1\nRp2\n."
    assert safe_load_pickle(io.BytesIO(py2_set)) == {1}


def test_refuses_codecs_other_than_latin1():
    # _codecs.encode is allowed only for the latin1 round-trip protocol 2 emits for bytes.
    raw = b"c_codecs\nencode\n(Vhello\nVrot13\ntR."
    with pytest.raises(UnsafePickleError, match="rot13"):
        safe_load_pickle(io.BytesIO(raw))


def test_refuses_numpy_globals_outside_array_reconstruction():
    raw = b"cnumpy\nload\n(Vx.npy\ntR."
    with pytest.raises(UnsafePickleError, match=r"numpy\.load"):
        safe_load_pickle(io.BytesIO(raw))


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": np.zeros(100)}, protocol=2)[:40])
    with pytest.raises(pickle.UnpicklingError, match="cut.pkl") as info:
        safe_load_pickle(str(path))
    assert not isinstance(info.value, UnsafePickleError)
