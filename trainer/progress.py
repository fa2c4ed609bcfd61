"""The console's progress: our own clean lines, a live one-line bar when stdout is a terminal.

  12:04:27 step 400/2000 | loss 1.8312 | 14.2 steps/s | 9,088 tokens/s | ETA 0:01:53

Lines are printed (not logged): no logging prefix, and nothing else is needed to see them.
"""

import datetime
import sys
import time


def clock() -> str:
  return datetime.datetime.now().strftime("%H:%M:%S")


def format_eta(seconds: float | None) -> str:
  if seconds is None:
    return "?"
  return str(datetime.timedelta(seconds=round(seconds)))


class ProgressReporter:
  """Writes kept lines; on a terminal also redraws a bar on one line in between.

  Args:
    stream: Where to write (default: sys.stdout at each write, so captured output sees it).
    live: Draw the live bar (default: whether the stream is a terminal).
    width: Bar width in characters.
  """

  def __init__(self, stream=None, live: bool | None = None, width: int = 30):
    self._stream = stream
    self._live = live
    self._width = width
    self._bar_open = False

  @property
  def stream(self):
    return self._stream or sys.stdout

  @property
  def live(self) -> bool:
    if self._live is not None:
      return self._live
    isatty = getattr(self.stream, "isatty", None)
    return bool(isatty and isatty())

  def bar(self, fraction: float, text: str) -> None:
    """Redraws the live bar (a no-op when not on a terminal)."""
    if not self.live:
      return
    filled = int(self._width * min(max(fraction, 0.0), 1.0))
    self.stream.write(f"\r[{'=' * filled}{' ' * (self._width - filled)}] {text}")
    self.stream.flush()
    self._bar_open = True

  def line(self, text: str) -> None:
    """Prints one kept line (closing the bar first)."""
    self.close_bar()
    print(f"{clock()} {text}", file=self.stream, flush=True)

  def close_bar(self) -> None:
    if self._bar_open:
      self.stream.write("\n")
      self.stream.flush()
      self._bar_open = False


class Rate:
  """Steps per second since `restart()`, for the ETA."""

  def __init__(self):
    self.restart(0)

  def restart(self, step: int) -> None:
    self._step, self._time = step, time.perf_counter()

  def eta(self, step: int, until: int) -> float | None:
    rate = (step - self._step) / max(time.perf_counter() - self._time, 1e-9)
    return (until - step) / rate if rate > 0 else None
