"""Training chunks of varying length, with optional burn-in context, over a `StreamLayout`.

Step k reads, from every row, the window of a `ChunkSchedule` entry (start s, length l) widened by
`burn_in` (k) tokens of context in front and padded to the schedule's maximum length M:

    columns   s-k ............ s ............ s+l ........ s+M
    inputs    [ burn-in (k)   | chunk (l)    | padding         ]   width k + M, static
    weights     0               1              0
    mask        True*           True           False              (*False before column 0)

The state carried into step k+1 is the one after the first l inputs (`carry_steps`): step k+1's
window starts at column s + l - k, where the burn-in of step k+1 begins. So the chunks tile each
row exactly and every target counts once, while the first predictions of a chunk see k tokens of
back-propagated context (TBPTT(k1, k2), Williams & Peng 1990). The learning rate of step k is
scaled by l / bptt (Merity et al. 2017, §4.1).
"""

import numpy as np
import tensorflow as tf

from tbptt.experiments.data.chunk_schedule import ChunkSchedule
from tbptt.experiments.data.tbptt import StreamLayout
from tbptt.trainer.errors import ConfigError


class ScheduledChunks:
  """Step -> chunk for a `StreamLayout` under a `ChunkSchedule`, with `burn_in` tokens of context.

  Args:
    layout: The training streams.
    schedule: Start and length of each step's chunk.
    burn_in: k, context tokens in front of each chunk (back-propagated through, weight 0).
    scale_learning_rate: Report l / bptt as the step's `learning_rate_scale` (varying lengths).
  """

  def __init__(self, layout: StreamLayout, schedule: ChunkSchedule, *, burn_in: int = 0,
               scale_learning_rate: bool = True):
    self.layout = layout
    self.schedule = schedule
    self.burn_in = int(burn_in)
    self.width = self.burn_in + schedule.max_length
    if self.width + 1 > layout.streams.shape[1]:
      raise ConfigError(f"TextCorpus.burn_in ({self.burn_in}) + max_seq_len "
                        f"({schedule.max_length}) + 1 tokens exceed a training row "
                        f"({layout.streams.shape[1]} tokens); use a smaller burn_in or "
                        "batch_size, or a longer text")
    self.scale_learning_rate = bool(scale_learning_rate)
    # Built eagerly once, so the tf.functions that read them capture them.
    self._starts = tf.constant(schedule.starts, tf.int64)
    self._lengths = tf.constant(schedule.lengths, tf.int32)

  @property
  def batch_size(self) -> int:
    return self.layout.batch_size

  @property
  def num_chunks(self) -> int:
    """Mean steps per pass over the text."""
    return self.schedule.steps_per_pass

  def entry(self, step):
    """(start int64, length int32) scalar tensors of global step `step`."""
    index = tf.math.floormod(tf.cast(step, tf.int64), self.schedule.period)
    return tf.gather(self._starts, index), tf.gather(self._lengths, index)

  def learning_rate_scale(self, step):
    """float32 l / bptt of step `step`; None if the rate is not scaled."""
    if not self.scale_learning_rate:
      return None
    _, length = self.entry(step)
    return tf.cast(length, tf.float32) / float(self.schedule.bptt)

  def chunk_for_step(self, step, row_start=0, num_rows: int | None = None) -> dict:
    """The chunk of global step `step` (see the module docstring), rows [row_start, +num_rows).

    Returns:
      inputs, targets [b, k + M] int32, weights [b, k + M] float32, mask [b, k + M] bool, reset
      [b] bool (a pass starts), carry_steps int32 scalar (l), burn_in (Python int k).
    """
    num_rows = self.batch_size if num_rows is None else num_rows
    start, length = self.entry(step)
    begin = tf.cast(start, tf.int32) - self.burn_in
    window = self.layout.window(begin, self.width + 1, row_start, num_rows)
    columns = tf.range(self.width)
    real = tf.logical_and(columns >= -begin, columns < self.burn_in + length)
    scored = tf.logical_and(columns >= self.burn_in, columns < self.burn_in + length)
    return {
        "inputs": window[:, :-1],
        "targets": window[:, 1:],
        "weights": tf.tile(tf.cast(scored, tf.float32)[None], [num_rows, 1]),
        "mask": tf.tile(real[None], [num_rows, 1]),
        "reset": tf.fill([num_rows], tf.equal(start, 0)),
        "carry_steps": length,
        "burn_in": self.burn_in,
    }


def fixed_schedule(layout: StreamLayout) -> ChunkSchedule:
  """The fixed-length chunks of `layout` (one pass) as a schedule, for burn-in without varying
  lengths: the same chunks, targets and carried states as `layout.chunk_for_step`."""
  seq_len = layout.seq_len
  schedule = ChunkSchedule(layout.streams.shape[1], seq_len, std=0.0, full_probability=1.0,
                           min_length=seq_len, max_length=seq_len, horizon=layout.num_chunks)
  assert schedule.period == layout.num_chunks and np.all(schedule.lengths == seq_len)
  return schedule
