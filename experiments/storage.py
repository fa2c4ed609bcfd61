"""Is model_dir usable? Checked before anything is built; write failures become one-line errors.

A run finds out about a model_dir it cannot use in one of two ways: up front (`check_model_dir`:
the path is a file, its parent is a file, the file system is read-only, the disk is full), or when a
write fails midway (`write_errors`: the disk filled up during training). Both are `ConfigError`s, so
the launcher prints one line naming the path and the fix and exits 2. TensorFlow's checkpoints are
written to a temporary name and moved into place, so a save cut short by a full disk leaves the
previous checkpoint the newest complete one, and rerunning the command after freeing space resumes
from it.
"""

import contextlib
import errno
import os
import re

from tbptt.trainer.errors import ConfigError

# errno of a failed write -> what to tell the user to do.
_FIXES = {
    errno.ENOSPC: "free some space or choose another --model_dir",
    errno.EDQUOT: "free some space or choose another --model_dir",
    errno.EROFS: "choose a --model_dir on a writable file system",
    errno.EACCES: "fix its permissions or choose another --model_dir",
    errno.EPERM: "fix its permissions or choose another --model_dir",
}
# TensorFlow's file system layer reports the same failures as OpErrors carrying strerror's text.
_TF_MESSAGES = {os.strerror(code): code for code in _FIXES}
_PATH = re.compile(r"(/[^\s;:'\"]+)")
_TF_NODE = re.compile(r"\{\{.*?\}\}")  # "{{function_node ..._device_/job:localhost/...}}"


def _fix(code: int) -> str:
  return _FIXES[code]


def _existing_ancestor(path: str) -> str:
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_model_dir(model_dir: str, writes: bool) -> None:
  """Raises a one-line ConfigError if `model_dir` cannot hold a run; changes nothing on disk.

  Args:
    model_dir: Path of the run directory, absolute or relative to the working directory (it need not
      exist yet).
    writes: The mode writes into model_dir (train, eval summaries, export): also check that the
      directory (or, if it does not exist yet, its nearest existing ancestor) can be written and the
      disk is not full.

  Raises:
    ConfigError: model_dir is a file; a parent is a file; the file system is read-only, not writable
      or full.
  """
  model_dir = os.path.abspath(model_dir)  # A relative path's nearest existing ancestor is the cwd.
  if os.path.lexists(model_dir) and not os.path.isdir(model_dir):
    raise ConfigError(f"--model_dir={model_dir} is a file, not a directory; choose another "
                      "--model_dir")
  ancestor = _existing_ancestor(model_dir)
  if not os.path.isdir(ancestor):
    raise ConfigError(f"--model_dir={model_dir} cannot be created: {ancestor} is a file; choose "
                      "another --model_dir")
  if not writes:
    return
  # os.access reports a read-only mount even to root (EROFS), unlike permission bits.
  if not os.access(ancestor, os.W_OK | os.X_OK):
    code = errno.EROFS if _read_only(ancestor) else errno.EACCES
    raise ConfigError(f"--model_dir={model_dir} cannot be written: {ancestor}: "
                      f"{os.strerror(code)}; {_fix(code)}")
  try:
    stats = os.statvfs(ancestor)
  except OSError:
    return  # No file system statistics (some FUSE mounts): let the writes speak for themselves.
  if stats.f_blocks and stats.f_bavail == 0:
    raise ConfigError(f"--model_dir={model_dir} cannot be written: {ancestor}: "
                      f"{os.strerror(errno.ENOSPC)}; {_fix(errno.ENOSPC)}")


def _read_only(path: str) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


def make_model_dir(model_dir: str) -> bool:
  """Creates model_dir (and its parents); returns whether it was created.

  Raises:
    ConfigError: it cannot be created (e.g. under /proc, or on a read-only file system).
  """
  if os.path.isdir(model_dir):
    return False
  try:
    os.makedirs(model_dir)
  except FileExistsError:
    return False  # Another process made it in between: fine.
  except OSError as e:
    fix = _FIXES.get(e.errno, "choose another --model_dir")
    raise ConfigError(f"--model_dir={model_dir} cannot be created: {e.strerror}; {fix}") from None
  return True


def storage_error(error: BaseException, model_dir: str) -> ConfigError | None:
  """The one-line ConfigError for a failed write (full disk, read-only, no permission), else None.

  Args:
    error: An OSError, or a tf.errors.OpError whose message carries the OS's reason.
    model_dir: The run directory (named when the error names no path).
  """
  import tensorflow as tf  # Here, so that run_lock (and a lock holder) need not load TensorFlow.

  if isinstance(error, OSError):
    code = error.errno
    if code not in _FIXES:
      return None
    path = error.filename or model_dir
  elif isinstance(error, tf.errors.OpError):
    message = error.message or str(error)
    code = next((c for text, c in _TF_MESSAGES.items() if text in message), None)
    if code is None:
      return None
    match = _PATH.search(_TF_NODE.sub("", message))
    path = match[1] if match else model_dir
  else:
    return None
  resume = ("; rerunning the command then resumes from the last complete checkpoint"
            if code in (errno.ENOSPC, errno.EDQUOT) else "")
  return ConfigError(f"cannot write {path}: {os.strerror(code)}; {_fix(code)}{resume}")


@contextlib.contextmanager
def write_errors(model_dir: str):
  """Re-raises a failed write in the block (see `storage_error`) as a one-line ConfigError."""
  try:
    yield
  except Exception as e:  # OSError or tf.errors.OpError; anything else is re-raised as it is.
    mapped = storage_error(e, model_dir)
    if mapped is None:
      raise
    raise mapped from None
