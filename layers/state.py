"""The recurrent state carried between steps and between TBPTT chunks."""

from typing import NamedTuple

import tensorflow as tf


class LSTMState(NamedTuple):
  """Hidden and cell state of one LSTM layer.

  A namedtuple, so `tf.nest`, `tf.function` signatures, `tf.distribute` and
  `tf.while_loop` treat it as a structure of two tensors.

  Attributes:
    h: Hidden state (the layer's output), [B, out] where out = num_proj or units.
    c: Cell state, [B, units].
  """

  h: tf.Tensor
  c: tf.Tensor


def zero_state(batch_size, units: int, output_size: int | None = None,
               dtype=tf.float32) -> LSTMState:
  """Returns an all-zero `LSTMState`.

  Args:
    batch_size: Rows B (a Python int or a scalar int tensor).
    units: Cell size u.
    output_size: Size of h; defaults to `units` (set it to num_proj for projected cells).
    dtype: State dtype (kept float32 under mixed precision).

  Returns:
    LSTMState(h [B, output_size], c [B, units]) of zeros.
  """
  output_size = units if output_size is None else output_size
  return LSTMState(h=tf.zeros([batch_size, output_size], dtype),
                   c=tf.zeros([batch_size, units], dtype))


def reset_rows(state, reset):
  """Zeroes the rows of any state structure whose `reset` flag is True.

  Used before a TBPTT chunk: a row that starts a new sequence must not see the
  state left by the previous sequence in that row.

  Args:
    state: A nest of tensors each shaped [B, ...] (an LSTMState, a tuple of them, ...).
    reset: [B] bool; True rows are zeroed.

  Returns:
    The same structure with the flagged rows set to zero.
  """
  reset = tf.convert_to_tensor(reset, tf.bool)

  def _reset(t):
    keep = tf.cast(tf.logical_not(reset), t.dtype)
    keep = tf.reshape(keep, tf.concat([tf.shape(keep), tf.ones([tf.rank(t) - 1], tf.int32)], 0))
    return t * keep

  return tf.nest.map_structure(_reset, state)
