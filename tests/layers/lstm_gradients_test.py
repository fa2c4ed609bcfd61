"""Numerical gradient checks of `LSTM` (float64) for every variant.

Gradients w.r.t. the inputs, the initial state and every weight against finite differences.
"""

import numpy as np
import pytest
import tensorflow as tf

from layer_utils import VARIANTS, randomize_weights
from tbptt.layers import LSTM, LSTMState

# Every test runs on both implementations (tests/layers/conftest.py).
pytestmark = pytest.mark.usefixtures("implementation")

B, T, F, U = 2, 3, 2, 3


def _lstm(variant):
  lstm = LSTM(U, dtype="float64", **VARIANTS[variant])
  lstm(tf.zeros([B, 1, F], tf.float64))
  randomize_weights(lstm.cell, seed=5)
  return lstm


def _flat_results(lstm, x, h0, c0):
  outputs, final = lstm(x, initial_state=LSTMState(h0, c0))
  return tf.concat([tf.reshape(outputs, [-1]), tf.reshape(final.c, [-1])], 0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gradients_match_finite_differences(variant):
  lstm = _lstm(variant)
  rng = np.random.default_rng(6)
  out = lstm.cell.output_size
  x, h0, c0 = (tf.constant(rng.normal(size=s)) for s in ([B, T, F], [B, out], [B, U]))

  # Inputs and initial state: full Jacobians.
  run = tf.function(lambda x, h0, c0: _flat_results(lstm, x, h0, c0))
  theoretical, numerical = tf.test.compute_gradient(run, [x, h0, c0], delta=1e-6)
  for name, a, n in zip(["inputs", "h0", "c0"], theoretical, numerical):
    assert np.any(a), f"no gradient reaches {name}"
    np.testing.assert_allclose(a, n, rtol=1e-5, atol=1e-7, err_msg=f"Jacobian w.r.t. {name}")

  # Weights: the derivative along a random direction, against a central difference.
  probe = tf.constant(rng.normal(size=run(x, h0, c0).shape))
  loss = tf.function(lambda: tf.reduce_sum(_flat_results(lstm, x, h0, c0) * probe))
  variables = lstm.cell.trainable_variables
  with tf.GradientTape() as tape:
    value = loss()
  grads = tape.gradient(value, variables)
  eps = 1e-6
  for variable, grad in zip(variables, grads):
    assert grad is not None, f"no gradient reaches {variable.path}"
    original = variable.numpy()
    direction = rng.normal(size=original.shape)
    variable.assign(original + eps * direction)
    plus = loss().numpy()
    variable.assign(original - eps * direction)
    minus = loss().numpy()
    variable.assign(original)
    np.testing.assert_allclose(np.sum(grad.numpy() * direction), (plus - minus) / (2 * eps),
                               rtol=1e-5, atol=1e-8, err_msg=f"gradient w.r.t. {variable.path}")
