"""resdet.utils.cli.tool_entry: expected errors are one line and exit 2; bugs keep their
traceback; --debug / RESDET_DEBUG=1 show it for expected errors too."""

from __future__ import annotations

import errno

import pytest

from resdet.config import ConfigError
from resdet.data.records import DatasetError
from resdet.utils.cli import describe_os_error, format_error, is_expected, tool_entry
from resdet.utils.output import OutputError


def _tool(exc: BaseException):
    seen = {}

    @tool_entry
    def main(argv=None) -> int:
        seen["argv"] = argv
        raise exc

    return main, seen


def test_expected_error_is_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv("RESDET_DEBUG", raising=False)
    main, seen = _tool(DatasetError("data.json: annotation id 3: bad box\nsecond line"))
    assert main(["--x", "1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: data.json: annotation id 3: bad box; second line\n"
    assert seen["argv"] == ["--x", "1"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(capsys, monkeypatch, how) -> None:
    monkeypatch.delenv("RESDET_DEBUG", raising=False)
    main, seen = _tool(ConfigError("my.yaml: unknown config key 'X'"))
    if how == "env":
        monkeypatch.setenv("RESDET_DEBUG", "1")
    assert main(["--debug"] if how == "flag" else []) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: my.yaml: unknown config key 'X'\n")
    assert seen["argv"] == []  # --debug is taken out before the tool parses


def test_bugs_keep_their_traceback() -> None:
    main, _ = _tool(KeyError("a bug"))
    with pytest.raises(KeyError):
        main([])
    assert not is_expected(ZeroDivisionError()) and not is_expected(ValueError())
    assert is_expected(PermissionError()) and is_expected(FloatingPointError())


def test_os_errors_read_plainly() -> None:
    e = OSError(errno.ENOSPC, "No space left on device", "/out/model.pth")
    assert describe_os_error(e) == "/out/model.pth: no space left on device"
    e = PermissionError(errno.EACCES, "Permission denied", "/ro/x", None, "/ro/y")
    assert describe_os_error(e) == "/ro/x -> /ro/y: permission denied"
    assert format_error(FileExistsError(errno.EEXIST, "File exists", "/a")).startswith("/a: ")
    # The project's own OSError keeps its message as written.
    assert format_error(OutputError(errno.EROFS, "/ro is read-only")) == "/ro is read-only"
