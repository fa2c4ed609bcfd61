"""One training run per model_dir: an exclusive lock on model_dir/.tbptt.lock for the run's life.

The lock is `flock(LOCK_EX | LOCK_NB)` on a file descriptor kept open until the run ends; the kernel
drops it when the process ends however it ends (SIGKILL included), so a lock is never stale and
there is nothing to clean up. The file records who holds it (pid, host, start time, command) for
the message a second run prints. Modes that write checkpoints take it; eval, sample and export do
not (evaluating while training is normal). Under multi-worker training every worker is given the
same model_dir and only the chief takes it.

  with RunLock(model_dir):      # ConfigError if another run holds it; model_dir is left as it was
    ...train...
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from tbptt.experiments import storage
from tbptt.trainer.errors import ConfigError

LOCK_FILE = ".tbptt.lock"


def is_chief(environ=None) -> bool:
  """Whether this process is the one that takes the lock: True unless TF_CONFIG says otherwise.

  With TF_CONFIG set, the chief is task type 'chief', or 'worker' index 0 when the cluster has no
  chief (as `trainer.distribute.is_chief`, but read before any strategy exists). A TF_CONFIG that
  is not valid JSON is left for `make_strategy` to report; this process counts as the chief.
  """
  raw = (os.environ if environ is None else environ).get("TF_CONFIG")
  if not raw:
    return True
  try:
    config = json.loads(raw)
  except ValueError:
    return True
  task = config.get("task") if isinstance(config, dict) else None
  if not isinstance(task, dict) or not task.get("type"):
    return True
  cluster = config.get("cluster") if isinstance(config.get("cluster"), dict) else {}
  if task["type"] == "chief":
    return True
  return task["type"] == "worker" and not cluster.get("chief") and str(task.get("index", 0)) == "0"


def describe_holder(path: str) -> str:
  """'pid 1234 on host, started 2024-05-01 12:00:00' from a lock file, or 'holder unknown'."""
  try:
    with open(path, encoding="utf-8") as f:
      info = json.loads(f.read() or "null")
    return f"pid {info['pid']} on {info['host']}, started {info['started']}"
  except (OSError, ValueError, TypeError, KeyError):
    return "holder unknown"  # Taken an instant ago and not written yet, or not our file.


class RunLock:
  """The exclusive lock of one run on `model_dir` (a context manager; see the module docstring).

  Taking it creates model_dir if needed and records this run in the lock file. A run that ends
  with a ConfigError leaves model_dir as it found it: a lock file that existed gets its contents and
  modification time back, one this run created is removed, and so is a model_dir this run created
  if nothing else is in it.

  Args:
    model_dir: Absolute path of the run directory.
    command: Recorded in the lock file for people who look (default: this process's argv).
  """

  def __init__(self, model_dir: str, command: str | None = None):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_FILE)
    self._command = " ".join(sys.argv) if command is None else command
    self._fd = None
    self._created_dir = False
    self._previous = None  # (contents, atime_ns, mtime_ns) of an existing lock file, else None.

  def acquire(self) -> "RunLock":
    """Takes the lock.

    Raises:
      ConfigError: another run holds it (nothing in model_dir is changed), or model_dir cannot be
        created or written.
    """
    self._created_dir = storage.make_model_dir(self.model_dir)
    try:
      self._lock()
      self._write_holder()
    except OSError as e:
      self.release(restore=True)
      mapped = storage.storage_error(e, self.model_dir)
      raise (mapped or ConfigError(f"cannot lock {self.path}: {e.strerror or e}; choose another "
                                   "--model_dir")) from None
    except ConfigError:
      self.release(restore=True)
      raise
    return self

  def _open(self) -> tuple[int, bool]:
    """Opens the lock file, creating it if needed; returns (fd, created). Never truncates: a run
    that finds the lock taken must leave the holder's file as it is."""
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
      return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
      return os.open(self.path, flags), False

  def _lock(self) -> None:
    while True:
      fd, created = self._open()
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
          raise
        raise ConfigError(f"model_dir {self.model_dir} is in use by another run "
                          f"({describe_holder(self.path)}); wait for it to finish or choose "
                          "another --model_dir") from None
      # A run that failed may have removed the file we opened (see `release`): then lock the file
      # that is at the path now.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        self._fd = fd
        if not created:
          stat = os.fstat(fd)
          self._previous = (os.pread(fd, stat.st_size, 0), stat.st_atime_ns, stat.st_mtime_ns)
        return
      os.close(fd)
      storage.make_model_dir(self.model_dir)

  def _write_holder(self) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
            "command": self._command}
    data = (json.dumps(info) + "\n").encode("utf-8")
    os.pwrite(self._fd, data, 0)
    os.ftruncate(self._fd, len(data))

  def release(self, restore: bool = False) -> None:
    """Drops the lock (closes the descriptor).

    Args:
      restore: Leave model_dir as this run found it (see the class docstring).
    """
    if restore and self._fd is not None:
      try:
        self._restore()
      except OSError:
        pass  # E.g. the disk is full: the file then describes a run that is over (harmless).
    self._created_dir = False
    self._previous = None
    if self._fd is not None:
      os.close(self._fd)  # Closing the last descriptor releases the flock.
      self._fd = None

  def _restore(self) -> None:
    if self._previous is None:
      os.unlink(self.path)  # Still locked while unlinked: see `_lock`.
      if self._created_dir and not os.listdir(self.model_dir):
        os.rmdir(self.model_dir)
      return
    contents, atime_ns, mtime_ns = self._previous
    os.pwrite(self._fd, contents, 0)
    os.ftruncate(self._fd, len(contents))
    os.utime(self._fd, ns=(atime_ns, mtime_ns))

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, exc_type, exc, traceback) -> None:
    self.release(restore=exc_type is not None and issubclass(exc_type, ConfigError))
