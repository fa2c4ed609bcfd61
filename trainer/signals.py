"""SIGINT/SIGTERM while training: the first asks for a clean stop, a second one exits at once."""

import os
import signal
import sys
import threading


class StopSignals:
  """While active: the first SIGINT/SIGTERM asks for a clean stop; a second one exits at once.

  The signals are read by a thread from a wakeup fd (`signal.set_wakeup_fd`), not by a Python
  handler: Python runs handlers only when the main thread is back in the interpreter, which it is
  not while a compiled loop or a checkpoint write runs. The thread calls `on_stop(signum)` on the
  first signal (the runner sets the variable its loop reads in every step) and `os._exit`s
  on the second, even in the middle of a save: the `checkpoint` state file still names the previous
  complete checkpoint, which the next start restores.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self, on_stop=None):
    self.signum = None
    self._on_stop = on_stop
    self._previous = {}
    self._previous_fd = None
    self._pipe = None
    self._thread = None

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # Signals are delivered to the main thread's handlers only.
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it; a full pipe drops bytes.
    self._pipe = (read_fd, write_fd)
    for signum in self.SIGNALS:
      # The C-level handler writes the byte; the Python one only has to exist (and do nothing).
      self._previous[signum] = signal.signal(signum, lambda *_: None)
    self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    if self._pipe is None:
      return
    signal.set_wakeup_fd(self._previous_fd)
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    os.close(self._pipe[1])  # The watcher's read returns b"" and it ends.
    self._thread.join()
    os.close(self._pipe[0])
    self._pipe = None

  def _watch(self):
    while True:
      data = os.read(self._pipe[0], 64)
      if not data:
        return
      for signum in data:
        if signum in self.SIGNALS:
          self._handle(signum)

  def _handle(self, signum):
    name = signal.Signals(signum).name
    if self.signum is not None:
      print(f"\nSecond {name}: exiting now, without a checkpoint (the last complete one stays "
            "usable).", file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.signum = signum
    print(f"\n{name}: stopping after the current step (send it again to exit at once).",
          file=sys.stderr, flush=True)
    if self._on_stop is not None:
      self._on_stop(signum)
