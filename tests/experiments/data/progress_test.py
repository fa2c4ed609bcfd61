"""Tests for experiments/data/progress.py: a live line on a terminal, log lines elsewhere."""

import io

from absl import logging

from tbptt.experiments.data.progress import LOG_EVERY_SECONDS, Progress


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_a_log_line_every_few_seconds_when_not_on_a_terminal(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args if args else fmt))
  clock, stream = _Clock(), io.StringIO()
  progress = Progress("tokenizing big.txt", 100e6, stream=stream, clock=clock)
  for second in range(1, 13):
    clock.now = second
    progress(int(second * 8e6))
  assert len(lines) == 12 // LOG_EVERY_SECONDS
  assert lines[0] == "tokenizing big.txt:  40% (40 of 100 MB, 8 MB/s)"
  progress.finish("tokenized big.txt")
  assert lines[-1] == "tokenized big.txt (12.0 s)" and stream.getvalue() == ""


def test_a_live_line_on_a_terminal(monkeypatch):
  monkeypatch.setattr(logging, "info", lambda *args: None)
  clock, terminal = _Clock(), _Terminal()
  progress = Progress("tokenizing big.txt", 10e6, stream=terminal, clock=clock)
  clock.now = 1.0
  progress(int(5e6))
  clock.now = 1.05
  progress(int(6e6))  # Too soon to redraw.
  clock.now = 2.0
  progress(int(10e6))
  progress.finish("done")
  writes = terminal.getvalue().split("\r")[1:]
  assert writes[0].startswith("tokenizing big.txt:  50% (5 of 10 MB, 5 MB/s)")
  assert writes[1].startswith("tokenizing big.txt: 100%") and writes[-1] == "\x1b[K"
