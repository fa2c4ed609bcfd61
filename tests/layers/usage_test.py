"""The README's usage patterns, run as written (the code between the markers is the README's)."""

import numpy as np

from layers import LSTMState


def test_explicit_initial_state_in_and_final_state_out():
  # --- README: carry the state between chunks ---
  import tensorflow as tf
  from layers import LSTM

  lstm = LSTM(64)
  state = lstm.get_initial_state(batch_size=8)         # LSTMState(h [8, 64], c [8, 64]) of zeros
  for chunk in tf.split(tf.random.normal([8, 40, 32]), 4, axis=1):    # 4 chunks of [8, 10, 32]
    outputs, state = lstm(chunk, initial_state=state)  # outputs [8, 10, 64]; state carries on
  # --- end ---
  assert outputs.shape == (8, 10, 64)
  assert isinstance(state, LSTMState) and state.h.shape == (8, 64) and state.c.shape == (8, 64)
  np.testing.assert_allclose(outputs[:, -1], state.h, rtol=1e-6, atol=1e-6)


def test_time_major_input_inside_tf_function():
  # --- README: time-major input in a compiled function ---
  import tensorflow as tf
  from layers import LSTM

  lstm = LSTM(128, time_major=True)

  @tf.function
  def run(x):
    return lstm(x)

  outputs, final_state = run(tf.random.normal([10, 1, 32]))   # x [T=10, B=1, F=32]
  print(outputs.shape)                                         # (10, 1, 128)
  # --- end ---
  assert outputs.shape == (10, 1, 128)
  assert final_state.h.shape == (1, 128) and final_state.c.shape == (1, 128)
  np.testing.assert_allclose(outputs[-1], final_state.h, rtol=1e-6, atol=1e-6)


def test_peephole_lstm():
  # --- README: peephole connections ---
  import tensorflow as tf
  from layers import LSTM

  lstm = LSTM(32, use_peepholes=True)    # adds cell.peephole_i, peephole_f, peephole_o, each [32]
  outputs, final_state = lstm(tf.random.normal([4, 20, 16]))
  # --- end ---
  assert outputs.shape == (4, 20, 32)
  assert [tuple(p.shape) for p in (lstm.cell.peephole_i, lstm.cell.peephole_f,
                                   lstm.cell.peephole_o)] == [(32,)] * 3
  assert len(lstm.trainable_weights) == 6
