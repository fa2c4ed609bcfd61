"""What the command line shows: the project's own lines, plain; TensorFlow's chatter on request.

At `--verbosity=0` (the default) log records print as their bare message (warnings prefixed with
`warning:`), without absl's `I1201 08:04:27.910852 140713501461376 file.py:215]` prefix, and
TensorFlow's and Keras's Python loggers show only errors: their INFO lines (checkpoint sharding
times, asset paths, signature renaming) say nothing a user can act on. `--verbosity=1` (or more)
restores absl's full prefix and TensorFlow's INFO logging. TensorFlow's native (C++) log is governed
by TF_CPP_MIN_LOG_LEVEL, which the launcher sets to 3 unless it is set already.
"""

import importlib.util
import logging
import os
import warnings

from absl import logging as absl_logging

_LIBRARY_LOGGERS = ("tensorflow", "keras", "h5py", "matplotlib")


class PlainFormatter(logging.Formatter):
  """`message` for INFO and below; `warning: message` / `error: message` above."""

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= logging.ERROR:
      return f"error: {message}"
    if record.levelno >= logging.WARNING:
      return f"warning: {message}"
    return message


def _package_dir(name: str):
  spec = importlib.util.find_spec(name)
  return os.path.dirname(spec.origin) + os.sep if spec and spec.origin else None


class LibraryChatterFilter(logging.Filter):
  """Drops records below ERROR logged from inside TensorFlow or Keras through absl's logger
  (e.g. `functional_saver.py] Sharding callback duration`), which no logger level can reach."""

  def __init__(self):
    super().__init__()
    self._dirs = tuple(d for d in map(_package_dir, _LIBRARY_LOGGERS[:2]) if d)

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not record.pathname.startswith(self._dirs)


def configure(verbosity: int) -> None:
  """Sets up the console for a launcher run at absl's `--verbosity` level.

  Args:
    verbosity: 0 or less: plain lines of our own, other libraries' errors only; 1 or more: every
      library's INFO lines with absl's prefix.
  """
  chatty = verbosity >= 1
  for name in _LIBRARY_LOGGERS:
    logging.getLogger(name).setLevel(logging.INFO if chatty else logging.ERROR)
  handler = absl_logging.get_absl_handler()
  for old in [f for f in handler.filters if isinstance(f, LibraryChatterFilter)]:
    handler.removeFilter(old)
  if chatty:
    handler.setFormatter(absl_logging.PythonFormatter())
    return
  handler.setFormatter(PlainFormatter())
  handler.addFilter(LibraryChatterFilter())
  # Keras and TensorFlow raise Python warnings about their own internals (e.g. renamed tensors).
  warnings.filterwarnings("ignore", module=r"(keras|tensorflow)(\.|$)")
