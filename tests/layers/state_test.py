"""Tests for layers/state.py: LSTMState as a nest, zero_state, reset_rows."""

import numpy as np
import tensorflow as tf

from tbptt.layers.state import LSTMState, reset_rows, zero_state


def test_lstm_state_is_a_nest_of_two_tensors():
  state = LSTMState(h=tf.ones([2, 3]), c=2 * tf.ones([2, 5]))
  flat = tf.nest.flatten(state)
  assert len(flat) == 2
  doubled = tf.nest.map_structure(lambda t: 2 * t, state)
  assert isinstance(doubled, LSTMState)
  np.testing.assert_array_equal(doubled.h, 2 * np.ones([2, 3]))
  np.testing.assert_array_equal(doubled.c, 4 * np.ones([2, 5]))
  packed = tf.nest.pack_sequence_as(state, [tf.zeros([2, 3]), tf.zeros([2, 5])])
  assert isinstance(packed, LSTMState)
  tf.nest.assert_same_structure(state, packed)


def test_lstm_state_passes_through_tf_function_and_while_loop():
  @tf.function
  def accumulate(state):
    return tf.while_loop(lambda i, s: i < 3, lambda i, s: (i + 1, LSTMState(s.h + 1, s.c * 2)),
                         (0, state))[1]

  out = accumulate(LSTMState(h=tf.zeros([2, 3]), c=tf.ones([2, 4])))
  assert isinstance(out, LSTMState)
  np.testing.assert_array_equal(out.h, 3 * np.ones([2, 3]))
  np.testing.assert_array_equal(out.c, 8 * np.ones([2, 4]))


def test_zero_state_shapes_and_dtype():
  state = zero_state(3, 5)
  assert state.h.shape == (3, 5) and state.c.shape == (3, 5)
  projected = zero_state(tf.constant(2), 6, output_size=4, dtype=tf.float64)
  assert projected.h.shape == (2, 4) and projected.c.shape == (2, 6)
  assert projected.h.dtype == tf.float64 and projected.c.dtype == tf.float64
  assert not np.any(projected.h) and not np.any(projected.c)


def test_reset_rows_zeroes_only_flagged_rows_of_a_nested_structure():
  rng = np.random.default_rng(0)
  state = (LSTMState(h=tf.constant(rng.normal(size=[3, 2])),
                     c=tf.constant(rng.normal(size=[3, 4]))),
           {"extra": tf.constant(rng.normal(size=[3, 2, 5]), tf.float32)})
  reset = [True, False, True]
  out = reset_rows(state, reset)
  tf.nest.assert_same_structure(state, out)
  for before, after in zip(tf.nest.flatten(state), tf.nest.flatten(out)):
    assert after.dtype == before.dtype
    np.testing.assert_array_equal(after[0], np.zeros_like(before[0]))
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], np.zeros_like(before[2]))


def test_reset_rows_with_a_tensor_flag_inside_tf_function():
  fn = tf.function(reset_rows)
  state = LSTMState(h=tf.ones([2, 3]), c=tf.ones([2, 4]))
  out = fn(state, tf.constant([False, True]))
  np.testing.assert_array_equal(out.h, [[1, 1, 1], [0, 0, 0]])
  np.testing.assert_array_equal(out.c, [[1] * 4, [0] * 4])
