"""TensorBoard writers for model_dir/train, model_dir/eval, ...; the operative config.

Nested metric dicts become tag folders: {"state": {"0/h": x}} is written as `state/0/h`.

Scalars and histograms are written by a `tf.function` per writer and set of tags, traced on its
first use: one call writes them all, where eager writes cost a few dozen small ops per value
(a histogram's buckets alone are some forty).
"""

import os

import gin
import numpy as np
import tensorflow as tf

OPERATIVE_CONFIG = "operative_config.gin"


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
  """{"a": {"b": 1}} -> {"a/b": 1}."""
  flat = {}
  for key, value in metrics.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict):
      flat.update(flatten(value, name))
    else:
      flat[name] = value
  return flat


class Summaries:
  """Lazily created summary writers, one per run directory under model_dir ('train', 'eval', ...).

  Args:
    model_dir: The run's directory.
    enabled: False on non-chief workers: every write is a no-op.
  """

  def __init__(self, model_dir: str, enabled: bool = True):
    self._model_dir = model_dir
    self._enabled = enabled
    self._writers = {}
    self._writes = {}  # (kind, writer name, tags) -> its compiled write.

  def writer(self, name: str):
    if name not in self._writers:
      self._writers[name] = (tf.summary.create_file_writer(os.path.join(self._model_dir, name))
                             if self._enabled else tf.summary.create_noop_writer())
    return self._writers[name]

  def scalars(self, name: str, step: int, metrics: dict) -> None:
    """Writes every (nested) scalar of `metrics` at `step` to the `name` writer (as float32)."""
    flat = flatten(metrics)
    if self._enabled and flat:
      write = self._compiled("scalars", name, tuple(flat), tf.summary.scalar)
      values = np.array([float(v) for v in flat.values()], np.float32)
      write(tf.constant(step, tf.int64), tf.constant(values))

  def histograms(self, name: str, step: int, tensors: dict) -> None:
    """Writes a histogram of every (nested) tensor of `tensors` at `step` to the `name` writer."""
    flat = flatten(tensors)
    if self._enabled and flat:
      write = self._compiled("histograms", name, tuple(flat), tf.summary.histogram)
      write(tf.constant(step, tf.int64), list(flat.values()))

  def _compiled(self, kind: str, name: str, tags: tuple, summary):
    """The compiled `write(step, values)` of `summary(tag, value)` for each tag, to `name`."""
    key = (kind, name, tags)
    if key not in self._writes:
      writer = self.writer(name)

      def write(step, values):
        if isinstance(values, tf.Tensor):  # Scalars come as one vector.
          values = tf.unstack(values, num=len(tags))
        with writer.as_default(step=step):
          for tag, value in zip(tags, values):
            summary(tag, value)
      self._writes[key] = tf.function(write)
    return self._writes[key]

  def text(self, name: str, step: int, tag: str, text: str) -> None:
    with self.writer(name).as_default(step=step):
      tf.summary.text(tag, text)

  def flush(self) -> None:
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers = {}
    self._writes = {}


def write_operative_config(model_dir: str, summaries: Summaries, step: int) -> str:
  """Saves `gin.operative_config_str()` to model_dir/operative_config.gin (atomically) and as text.

  Returns:
    The config text.
  """
  config = gin.operative_config_str()
  path = os.path.join(model_dir, OPERATIVE_CONFIG)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config)
  os.replace(tmp, path)
  # Indented lines render as a code block in TensorBoard's Markdown text plugin.
  summaries.text("train", step, "operative_config",
                 "\n".join("    " + line for line in config.splitlines()) or "    (empty)")
  return config
