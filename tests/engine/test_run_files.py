"""The files a run writes: metrics.json is valid JSON when a metric is NaN, log.txt has no colour
codes (the real processes' output is checked by tests/e2e/test_train_net.py)."""
import io
import json
import logging

import pytest
from detectron2.utils.events import EventStorage

from instseg.logs import JSONWriter, PlainFormatter, plain_log_files


def test_metrics_json_writes_nan_and_inf_as_null(tmp_path):
    writer = JSONWriter(str(tmp_path / "metrics.json"))
    with EventStorage(3) as storage:
        storage.put_scalars(**{"segm/AP": float("nan"), "bbox/AP": 12.5, "loss": float("inf")}, smoothing_hint=False)
        writer.write()
    writer.close()
    (line,) = (tmp_path / "metrics.json").read_text().splitlines()
    row = json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert row == {"segm/AP": None, "bbox/AP": 12.5, "loss": None, "iteration": 3}


def test_log_file_handlers_strip_colour_codes_and_the_terminal_keeps_them(tmp_path):
    logger = logging.getLogger("instseg.test_run_files")
    file, terminal = open(tmp_path / "log.txt", "w"), io.StringIO()
    file_handler, terminal_handler = logging.StreamHandler(file), logging.StreamHandler(terminal)
    file_handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    for handler in (file_handler, terminal_handler):
        logger.addHandler(handler)
    try:
        plain_log_files([logger.name])
        logger.warning("\x1b[38;5;204mMODEL\x1b[39m: \x1b[1;31mred\x1b[0m")
    finally:
        for handler in (file_handler, terminal_handler):
            logger.removeHandler(handler)
        file.close()
    assert isinstance(file_handler.formatter, PlainFormatter)
    assert (tmp_path / "log.txt").read_text() == "[instseg.test_run_files] MODEL: red\n"
    assert "\x1b[1;31m" in terminal.getvalue()
