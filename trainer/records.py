"""Actions that leave a record of the run for TensorBoard: the operative config, HParams, profiles.

The first two are written after the first compiled call (the operative config then lists what the
traced graph used) but stamped with the step the run started from.
"""

import ast
import logging
import re

import gin
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from tbptt.trainer.actions import Action
from tbptt.trainer.summaries import Summaries, write_operative_config

_log = logging.getLogger("tbptt.trainer")
_STATEMENT = re.compile(r"^([A-Za-z_][\w./]*)\s*=\s*(.*)$")


class _Once(Action):
  """Calls `write(start_step)` once: after the first loop, or at the end of an evaluation."""

  def __init__(self):
    self._start = None
    self._done = False

  def on_start(self, step, until):
    if self._start is None:
      self._start = step

  def on_train(self, step, outputs, metrics):
    self._once(step)

  def on_end(self, step):
    self._once(step)

  def _once(self, step):
    if not self._done:
      self._done = True
      self.write(step if self._start is None else self._start)

  def write(self, step: int) -> None:
    raise NotImplementedError


class OperativeConfig(_Once):
  """model_dir/operative_config.gin and the `operative_config` text summary (chief only)."""

  def __init__(self, model_dir: str, summaries: Summaries, enabled: bool = True):
    super().__init__()
    self._model_dir = model_dir
    self._summaries = summaries
    self._enabled = enabled

  def write(self, step):
    if self._enabled:
      write_operative_config(self._model_dir, self._summaries, step)


def bound_values(config: str) -> dict[str, bool | int | float | str]:
  """{'Trainer.clip_norm': 1.0, ...}: every binding of a gin config text, as HParams values.

  Values that are not a bool, number or string (None, references, lists) become their text.
  """
  statements, values = [], {}
  for line in config.splitlines():
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    if line[0].isspace() and statements:  # A value continued on the next line.
      statements[-1] = statements[-1].rstrip("\\").rstrip() + " " + line.strip()
    else:
      statements.append(line.strip())
  for statement in statements:
    match = _STATEMENT.match(statement)
    if not match:
      continue  # e.g. `import` lines.
    name, text = match[1], match[2].strip()
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    values[name] = value if isinstance(value, (bool, int, float, str)) else text
  return values


class HParams(_Once):
  """Logs every gin binding of the operative config through TensorBoard's HParams API.

  The session is the run's directory (model_dir): the HPARAMS tab lists the bindings as columns and
  takes each session's metrics from the scalars of its runs (the last `eval/loss`,
  `eval/bits_per_char`, ...), so runs launched with different bindings compare side by side.

  Args:
    summaries: Written with its '' (model_dir) writer.
    trial_id: The session's name (default: TensorBoard's, from the run directory).
  """

  def __init__(self, summaries: Summaries, trial_id: str | None = None):
    super().__init__()
    self._summaries = summaries
    self._trial_id = trial_id

  def write(self, step):
    values = bound_values(gin.operative_config_str())
    with self._summaries.writer("").as_default(step=step):
      hp.hparams(values, trial_id=self._trial_id)


class Profiler(Action):
  """A TensorBoard profile of global steps [start, stop) in `logdir` (the PROFILE tab).

  Loops end at `start` and `stop` (see `next_boundary`), so the profile holds exactly those steps.
  """

  def __init__(self, logdir: str, start: int, stop: int, enabled: bool = True):
    self._logdir = logdir
    self._start, self._stop = start, stop
    self._enabled = enabled
    self._running = False

  def next_boundary(self, step):
    for boundary in (self._start, self._stop):
      if step < boundary:
        return boundary
    return None

  def on_start(self, step, until):
    self._toggle(step)

  def on_train(self, step, outputs, metrics):
    self._toggle(step)

  def on_end(self, step):
    self._finish()

  def _toggle(self, step):
    if not self._enabled:
      return
    if not self._running and self._start <= step < self._stop:
      tf.profiler.experimental.start(self._logdir)
      self._running = True
      _log.info("Profiling steps %d to %d into %s.", step, self._stop, self._logdir)
    elif self._running and step >= self._stop:
      self._finish()

  def _finish(self):
    if self._running:
      tf.profiler.experimental.stop()
      self._running = False
