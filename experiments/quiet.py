"""Quiet TensorFlow's import for command-line use: its native runtime logs a few lines to stderr
while it loads (before any log level applies), which would bury the launcher's one-line errors."""

import os


def quiet_tensorflow_import() -> None:
  """Imports TensorFlow with stderr silenced at the file-descriptor level.

  Its native log level is set to fatal-only unless TF_CPP_MIN_LOG_LEVEL is already set (set it to 0
  to see everything). Python import errors still surface: they are raised after stderr is restored.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, 2)
    import tensorflow  # noqa: F401
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)
