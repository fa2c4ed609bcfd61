"""The README's three canonical layer patterns, as written there, with checks of what they compute.

The code between the markers is the README's (tests/readme_test.py runs the README's own copy).
"""

import numpy as np
import pytest

from tbptt.layers import LSTMState

# Every test runs on both implementations (tests/layers/conftest.py).
pytestmark = pytest.mark.usefixtures("implementation")

TOL = dict(rtol=1e-5, atol=1e-5)


def test_explicit_state_in_and_out():
  # --- README ---
  import tensorflow as tf
  from tbptt.layers import LSTM

  lstm = LSTM(64)
  x = tf.random.normal([8, 100, 32])
  state = lstm.get_initial_state(8)
  for chunk in tf.split(x, 4, axis=1):             # 4 chunks of 25 steps
    outputs, state = lstm(chunk, initial_state=state)
  # --- end ---
  assert outputs.shape == (8, 25, 64)
  assert isinstance(state, LSTMState) and state.h.shape == (8, 64) and state.c.shape == (8, 64)
  full, full_state = lstm(x)
  np.testing.assert_allclose(outputs, full[:, 75:], **TOL)
  np.testing.assert_allclose(state.c, full_state.c, **TOL)


def test_time_major_input_inside_tf_function():
  import tensorflow as tf
  from tbptt.layers import LSTM

  # --- README ---
  lstm = LSTM(64, time_major=True)

  @tf.function
  def run(x):
    return lstm(x)

  outputs, final_state = run(tf.random.normal([10, 1, 32]))   # outputs [10, 1, 64]
  # --- end ---
  assert outputs.shape == (10, 1, 64)
  assert final_state.h.shape == (1, 64) and final_state.c.shape == (1, 64)
  np.testing.assert_allclose(outputs[-1], final_state.h, **TOL)


def test_peephole_connections():
  import tensorflow as tf
  from tbptt.layers import LSTM

  # --- README ---
  lstm = LSTM(64, use_peepholes=True)
  outputs, final_state = lstm(tf.random.normal([4, 20, 32]))
  # --- end ---
  assert outputs.shape == (4, 20, 64)
  peepholes = (lstm.cell.peephole_i, lstm.cell.peephole_f, lstm.cell.peephole_o)
  assert [tuple(p.shape) for p in peepholes] == [(64,)] * 3
  assert len(lstm.trainable_weights) == 6
  np.testing.assert_allclose(outputs[:, -1], final_state.h, **TOL)
