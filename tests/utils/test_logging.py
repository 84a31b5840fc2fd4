"""resdet.utils.logging: a log file that stops being writable is one warning line, no traceback."""

from __future__ import annotations

import errno
import logging

from resdet.utils.logging import close_logging, setup_logging


def test_full_disk_log_file_is_one_line(tmp_path, capsys) -> None:
    logger = setup_logging(str(tmp_path))
    level = logger.level
    try:
        logger.info("first line")
        handler = next(h for h in logger.handlers if isinstance(h, logging.FileHandler))

        def full(_text):
            raise OSError(errno.ENOSPC, "No space left on device")

        handler.stream.write = full
        capsys.readouterr()
        logger.info("second")
        logger.warning("third")
        err = capsys.readouterr().err
    finally:
        close_logging()
        logger.setLevel(level)
    assert "Traceback" not in err and "Logging error" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: cannot write")]
    assert len(warnings) == 1 and "log.txt (no space left on device)" in warnings[0]
    assert "second" in err and "third" in err  # the console goes on
    assert "first line" in (tmp_path / "log.txt").read_text()
