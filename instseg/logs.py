"""The files a run writes: plain log.txt, valid metrics.json (see also instseg.dependency_warnings).

- detectron2 colours parts of its log messages (the config dump goes through pygments, the class
  histogram through termcolor), so its log.txt holds ANSI escape codes; ``plain_log_files`` makes the
  file handlers strip them, leaving the terminal's colours alone.
- detectron2's JSONWriter writes NaN (an AP with no predictions) as a bare ``NaN``, which is not
  JSON; ``JSONWriter`` here writes null.
"""
import json
import logging
import math
import os
import re
from collections import defaultdict

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from .detectron2_compat import JSONWriterState

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOGGERS = ("detectron2", "fvcore", "instseg")


class PlainFormatter(logging.Formatter):
    """A formatter whose output has no ANSI escape codes, whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        return ANSI_ESCAPE.sub("", super().format(record))


def plain_log_files(names=LOGGERS) -> None:
    """Make the file handlers that detectron2's setup_logger gave the loggers `names` (log.txt)
    write without ANSI escape codes; call after setup_logger / default_setup."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            path = getattr(getattr(handler, "stream", None), "name", None)  # "<stdout>" for the terminal
            if not (isinstance(path, str) and os.path.isfile(path)) or isinstance(handler.formatter, PlainFormatter):
                continue
            formatter = handler.formatter or logging.Formatter()
            handler.setFormatter(PlainFormatter(formatter._fmt, formatter.datefmt))


def setup_run_logging(cfg, args) -> None:
    """detectron2's default_setup (logs the environment and the config, saves config.yaml) plus the
    instseg logger, all writing OUTPUT_DIR/log.txt without colour codes."""
    rank = comm.get_rank()
    # The loggers default_setup sets up, made first so that their log files are plain before it
    # logs the highlighted config: setup_logger is cached on its arguments, and these are the calls
    # default_setup makes (tests/e2e/test_train_net.py checks that no line is logged twice).
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fvcore")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="instseg")
    plain_log_files()
    default_setup(cfg, args)


def _json_number(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


class JSONWriter(JSONWriterState):
    """detectron2's metrics.json writer (one JSON object per line), with NaN and infinite values
    written as null, so that every line is valid JSON."""

    def write(self):
        storage = get_event_storage()
        to_save = defaultdict(dict)
        for key, (value, iteration) in storage.latest_with_smoothing_hint(self.window_size).items():
            if iteration > self.last_write:  # scalars not written yet
                to_save[iteration][key] = _json_number(value)
        if to_save:
            self.last_write = max(to_save)
        for iteration, scalars in sorted(to_save.items()):
            self.file_handle.write(json.dumps({**scalars, "iteration": iteration}, sort_keys=True, allow_nan=False) + "\n")
        self.file_handle.flush()
        try:
            os.fsync(self.file_handle.fileno())
        except AttributeError:  # not a local file
            pass
