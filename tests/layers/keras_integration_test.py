"""The layers inside Keras: model.fit, .keras save and reload, mixed-precision policies."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from layer_utils import VARIANTS, copy_cell_weights, randomize_weights
from tbptt.layers import LSTM, LSTMState, StackedLSTM

# Every test runs on both implementations (tests/layers/conftest.py).
pytestmark = pytest.mark.usefixtures("implementation")

B, T, F, U = 4, 6, 3, 8


def _normal(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_model_fit_halves_the_loss_on_a_toy_task():
  keras.utils.set_random_seed(0)
  # Target: the running mean of feature 0, which needs memory of earlier steps.
  x = _normal(0, 64, T, F)
  y = np.cumsum(x[..., :1], axis=1) / np.arange(1, T + 1)[None, :, None]
  inputs = keras.Input((T, F))
  hidden = StackedLSTM(U, 2, residual=True, return_state=False, use_peepholes=True)(inputs)
  outputs, _ = LSTM(U, layer_norm=True)(hidden)
  model = keras.Model(inputs, keras.layers.Dense(1)(outputs))
  model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
  history = model.fit(x, y, batch_size=32, epochs=12, verbose=0).history["loss"]
  assert history[-1] < 0.5 * history[0], history


def _saveable_model():
  inputs = keras.Input((T, F))
  sequence, state = LSTM(U, **VARIANTS["everything"])(inputs)
  stacked, states = StackedLSTM([U, 5], 2, residual=True, layer_norm=True)(inputs)
  last = LSTM(4, return_sequences=False, return_state=False, time_major=True)(
      keras.ops.transpose(sequence, [1, 0, 2]))
  model = keras.Model(inputs, [keras.layers.Dense(2)(sequence), state.h, state.c, stacked,
                               states[1].c, last])
  for layer in model.layers:
    for lstm in getattr(layer, "layers_", [layer]):
      if isinstance(lstm, LSTM):
        randomize_weights(lstm.cell, seed=len(lstm.name))
  return model


def test_keras_file_save_and_reload_gives_identical_outputs(tmp_path):
  model = _saveable_model()
  x = _normal(1, B, T, F)
  expected = model.predict(x, verbose=0)
  path = tmp_path / "model.keras"
  model.save(path)
  restored = keras.models.load_model(path)
  kinds = sorted(type(layer).__name__ for layer in restored.layers)
  assert kinds.count("LSTM") == 2 and kinds.count("StackedLSTM") == 1
  got = restored.predict(x, verbose=0)
  assert len(got) == len(expected) == 6
  for a, b in zip(got, expected):
    np.testing.assert_array_equal(a, b)


@pytest.fixture
def restore_global_policy():
  policy = keras.mixed_precision.global_policy()
  yield
  keras.mixed_precision.set_global_policy(policy)


# The kernel computes in one dtype: under a mixed policy 'auto' runs the loop.
@pytest.mark.expect_implementation("loop")
@pytest.mark.parametrize("policy, tol", [("mixed_float16", 5e-3), ("mixed_bfloat16", 3e-2)])
def test_mixed_precision_computes_in_half_and_keeps_state_float32(policy, tol,
                                                                  restore_global_policy):
  x = _normal(2, B, T, F)
  reference = LSTM(U, implementation="loop", **VARIANTS["everything"])
  reference(x)
  randomize_weights(reference.cell, seed=3)
  state = LSTMState(tf.constant(_normal(4, B, 3)), tf.constant(_normal(5, B, U)))
  expected, expected_final = reference(x, initial_state=state)

  keras.mixed_precision.set_global_policy(policy)
  compute_dtype = keras.mixed_precision.global_policy().compute_dtype
  lstm = LSTM(U, **VARIANTS["everything"])
  stacked = StackedLSTM(U, 2, num_proj=3)
  lstm(x)
  copy_cell_weights(reference.cell, lstm.cell)
  assert all(v.dtype == "float32" for v in lstm.weights)

  with tf.GradientTape() as tape:
    outputs, final = lstm(x, initial_state=state)
    stacked_outputs, stacked_states = stacked(outputs)
    loss = tf.reduce_sum(tf.cast(stacked_outputs, tf.float32)) + tf.reduce_sum(final.c)
  assert outputs.dtype == compute_dtype and stacked_outputs.dtype == compute_dtype
  assert lstm.get_initial_state(2).h.dtype == tf.float32
  for t in tf.nest.flatten((final, stacked_states)):
    assert t.dtype == tf.float32
  np.testing.assert_allclose(tf.cast(outputs, tf.float32), expected, rtol=tol, atol=tol)
  np.testing.assert_allclose(final.c, expected_final.c, rtol=tol, atol=tol)
  variables = lstm.trainable_variables + stacked.trainable_variables
  grads = tape.gradient(loss, variables)
  for variable, grad in zip(variables, grads):
    assert grad is not None and grad.dtype == tf.float32, variable.path
    assert np.all(np.isfinite(grad)), variable.path

  compiled_outputs, _ = tf.function(lambda x: lstm(x, initial_state=state))(tf.constant(x))
  assert compiled_outputs.dtype == compute_dtype
  np.testing.assert_allclose(tf.cast(compiled_outputs, tf.float32), expected, rtol=tol, atol=tol)


@pytest.mark.expect_implementation("loop")
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_stateful_layer_under_mixed_precision_keeps_a_float32_state(policy, restore_global_policy):
  x = _normal(6, B, T, F)
  reference = LSTM(U, stateful=True, implementation="loop")
  reference(x)
  randomize_weights(reference.cell, seed=7)
  reference.reset_state()
  keras.mixed_precision.set_global_policy(policy)
  lstm = LSTM(U, stateful=True)
  lstm(x)
  copy_cell_weights(reference.cell, lstm.cell)
  lstm.reset_state()
  for _ in range(2):
    outputs, final = lstm(x)
    expected, _ = reference(x)
    assert final.h.dtype == tf.float32 and final.c.dtype == tf.float32
    np.testing.assert_allclose(tf.cast(outputs, tf.float32), expected, rtol=3e-2, atol=3e-2)
