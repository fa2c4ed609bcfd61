"""Progress of a long pass over a file: a live line on a terminal, a log line every few seconds
elsewhere."""

import sys
import time

from absl import logging

LOG_EVERY_SECONDS = 5.0
_REDRAW_SECONDS = 0.2


class Progress:
  """Reports `done` of `total` bytes of one named pass.

  Args:
    label: What is being done, e.g. "tokenizing train.txt".
    total: Bytes the pass reads.
    stream: Where a terminal's live line goes (default sys.stderr); when it is not a terminal,
      progress is logged instead.
    clock: Seconds (time.monotonic; tests pass a fake).
  """

  def __init__(self, label: str, total: int, stream=None, clock=time.monotonic):
    self.label = label
    self.total = max(int(total), 1)
    self._stream = sys.stderr if stream is None else stream
    self._live = bool(getattr(self._stream, "isatty", lambda: False)())
    self._clock = clock
    self._start = self._last = clock()

  def _line(self, done: int) -> str:
    seconds = max(self._clock() - self._start, 1e-9)
    return (f"{self.label}: {100 * done / self.total:3.0f}% ({done / 1e6:,.0f} of "
            f"{self.total / 1e6:,.0f} MB, {done / 1e6 / seconds:,.0f} MB/s)")

  def __call__(self, done: int) -> None:
    now = self._clock()
    if self._live:
      if now - self._last >= _REDRAW_SECONDS or done >= self.total:
        self._stream.write("\r" + self._line(done) + "\x1b[K")
        self._stream.flush()
        self._last = now
    elif now - self._last >= LOG_EVERY_SECONDS:
      logging.info(self._line(done))
      self._last = now

  def finish(self, summary: str) -> None:
    """Ends the live line (if any) and logs `summary` with the pass's time."""
    if self._live:
      self._stream.write("\r\x1b[K")
      self._stream.flush()
    logging.info("%s (%.1f s)", summary, self._clock() - self._start)
