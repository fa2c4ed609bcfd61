"""Tests for layers/stacked.py: StackedLSTM against manually chained LSTM layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from layer_utils import VARIANTS, copy_cell_weights, randomize_weights
from tbptt.layers import LSTM, LSTMState, StackedLSTM

# Every test runs on both implementations (tests/layers/conftest.py).
pytestmark = pytest.mark.usefixtures("implementation")

B, T, F = 3, 4, 5
TOL = dict(rtol=1e-5, atol=1e-5)
MASK = np.array([[True, True, True, True], [True, False, True, False], [False, True, True, True]])


def _normal(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _stacked(units, num_layers, features=F, **kwargs):
  stacked = StackedLSTM(units, num_layers, **kwargs)
  shape = [2, 2, features]
  stacked(tf.zeros([shape[1], shape[0], features] if kwargs.get("time_major") else shape))
  for i, layer in enumerate(stacked.layers_):
    randomize_weights(layer.cell, seed=10 + i)
  return stacked


def _manual_layers(stacked, **kwargs):
  """Separate LSTM layers with the stacked layers' weights."""
  layers = []
  for layer in stacked.layers_:
    twin = LSTM(layer.units, **kwargs)
    twin(tf.zeros([2, 2, layer.cell.input_dim]))
    copy_cell_weights(layer.cell, twin.cell)
    layers.append(twin)
  return layers


def _random_states(stacked, seed):
  return tuple(LSTMState(tf.constant(_normal(seed + 2 * i, B, layer.cell.output_size)),
                         tf.constant(_normal(seed + 2 * i + 1, B, layer.units)))
               for i, layer in enumerate(stacked.layers_))


def test_states_are_a_tuple_of_lstm_states_one_per_layer():
  stacked = _stacked([6, 4, 3], 3, num_proj=2)
  outputs, states = stacked(_normal(0, B, T, F))
  assert outputs.shape == (B, T, 2)
  assert isinstance(states, tuple) and len(states) == 3
  assert all(isinstance(s, LSTMState) for s in states)
  assert [tuple(s.c.shape) for s in states] == [(B, 6), (B, 4), (B, 3)]
  assert [tuple(s.h.shape) for s in states] == [(B, 2)] * 3
  assert [layer.cell.input_dim for layer in stacked.layers_] == [F, 2, 2]
  initial = stacked.get_initial_state(B)
  tf.nest.assert_same_structure(initial, states)
  assert all(not np.any(t) for t in tf.nest.flatten(initial))
  assert [tuple(s.c.shape) for s in initial] == [(B, 6), (B, 4), (B, 3)]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
def test_equals_manually_chained_lstm_layers(compiled):
  stacked = _stacked([6, 4], 2, **VARIANTS["peepholes"])
  first, second = _manual_layers(stacked, **VARIANTS["peepholes"])
  run = tf.function(stacked) if compiled else stacked
  x, initial, mask = _normal(1, B, T, F), _random_states(stacked, 2), tf.constant(MASK)
  outputs, states = run(tf.constant(x), initial_state=initial, mask=mask)
  hidden, first_state = first(x, initial_state=initial[0], mask=mask)
  expected, second_state = second(hidden, initial_state=initial[1], mask=mask)
  np.testing.assert_allclose(outputs, expected, **TOL)
  for got, want in zip(tf.nest.flatten(states), tf.nest.flatten((first_state, second_state))):
    np.testing.assert_allclose(got, want, **TOL)


def test_residual_adds_each_layers_input_where_shapes_match():
  units = 4
  stacked = _stacked(units, 3, residual=True)
  layers = _manual_layers(stacked)
  x = _normal(3, B, T, F)
  outputs, states = stacked(x)
  # Layer 0 maps F=5 features to 4 units, so it has no residual; layers 1 and 2 add their input.
  h, _ = layers[0](x)
  manual_states = []
  for layer in layers[1:]:
    out, state = layer(h)
    manual_states.append(state)
    h = out + h
  np.testing.assert_allclose(outputs, h, **TOL)
  for got, want in zip(states[1:], manual_states):
    np.testing.assert_allclose(got.h, want.h, **TOL)
    np.testing.assert_allclose(got.c, want.c, **TOL)
  plain = _stacked(units, 3)
  for source, target in zip(stacked.layers_, plain.layers_):
    copy_cell_weights(source.cell, target.cell)
  assert not np.allclose(plain(x)[0], outputs, **TOL), "residual=True must change the outputs"


def test_residual_includes_the_first_layer_when_its_input_matches():
  stacked = _stacked(F, 2, residual=True)
  layers = _manual_layers(stacked)
  x = _normal(4, B, T, F)
  h = layers[0](x)[0] + x
  h = layers[1](h)[0] + h
  np.testing.assert_allclose(stacked(x)[0], h, **TOL)


def test_time_major_and_last_output():
  batch_major = _stacked([5, 3], 2)
  time_major = _stacked([5, 3], 2, time_major=True, return_sequences=False)
  for source, target in zip(batch_major.layers_, time_major.layers_):
    copy_cell_weights(source.cell, target.cell)
  x = _normal(5, B, T, F)
  outputs, states = batch_major(x)
  last, tm_states = time_major(np.transpose(x, [1, 0, 2]))
  assert last.shape == (B, 3)
  np.testing.assert_allclose(last, outputs[:, -1], **TOL)
  np.testing.assert_allclose(last, states[-1].h, **TOL)
  for got, want in zip(tf.nest.flatten(tm_states), tf.nest.flatten(states)):
    np.testing.assert_allclose(got, want, **TOL)
  only_outputs = StackedLSTM(3, 2, return_state=False)(x)
  assert isinstance(only_outputs, tf.Tensor) and only_outputs.shape == (B, T, 3)


def test_dropout_between_applies_only_in_training():
  stacked = _stacked(4, 3, dropout_between=0.5, seed=1)
  reference = _stacked(4, 3)
  for source, target in zip(stacked.layers_, reference.layers_):
    copy_cell_weights(source.cell, target.cell)
  x = _normal(6, B, T, F)
  expected = reference(x)[0]
  np.testing.assert_allclose(stacked(x)[0], expected, **TOL)
  np.testing.assert_allclose(stacked(x, training=False)[0], expected, **TOL)
  trained_a, trained_b = stacked(x, training=True)[0], stacked(x, training=True)[0]
  assert not np.allclose(trained_a, expected, **TOL)
  assert not np.allclose(trained_a, trained_b, **TOL), "dropout must draw new masks per call"
  # The bottom layer reads the raw inputs, so its state is untouched by dropout between layers.
  np.testing.assert_allclose(stacked(x, training=True)[1][0].c, reference(x)[1][0].c, **TOL)


def test_locked_dropout_between_uses_one_mask_per_row_for_every_step():
  size, steps = 4, 6
  stacked = _stacked(size, 2, dropout_between=0.5, locked_dropout=True, seed=1)
  x = tf.constant(np.random.default_rng(3).normal(size=(3, steps, F)), tf.float32)
  dropout = stacked.dropouts[0]
  dropped = dropout(tf.ones([3, steps, size]), training=True).numpy()
  assert np.all(dropped == dropped[:, :1]), "the same mask at every step"
  assert 0 < np.count_nonzero(dropped) < dropped.size
  assert not np.all(dropped == dropped[:1]), "rows draw their own masks"
  outputs, _ = stacked(x, training=True)
  assert outputs.shape == (3, steps, size)


def test_config_round_trip():
  stacked = _stacked([4, 3], 2, dropout_between=0.25, residual=True, time_major=True,
                     return_sequences=False, layer_norm=True, cell_clip=2.0, seed=3)
  config = stacked.get_config()
  clone = StackedLSTM.from_config(config)
  assert clone.get_config() == config
  assert [layer.cell.layer_norm for layer in clone.layers_] == [True, True]
  assert keras.saving.get_registered_object("tbptt>StackedLSTM") is StackedLSTM


@pytest.mark.parametrize("args, kwargs, argument", [
    ((4, 0), {}, "num_layers"), ((0, 2), {}, "units"), (([4, 3, 2], 2), {}, "units"),
    (([4, -3], 2), {}, "units"), ((4, 2), dict(dropout_between=1.0), "dropout_between"),
    ((4, 2), dict(zoneout_cell=-0.1), "zoneout_cell"), ((4, 2), dict(cell_clip=0.0), "cell_clip"),
])
def test_bad_constructor_argument_raises_value_error_naming_it(args, kwargs, argument):
  with pytest.raises(ValueError, match=argument):
    StackedLSTM(*args, **kwargs)


def test_bad_inputs_raise_value_error():
  stacked = _stacked(4, 2)
  with pytest.raises(ValueError, match=r"inputs.*rank 3"):
    stacked(tf.zeros([B, F]))
  with pytest.raises(ValueError, match=r"initial_state.*2.*got.*length 1"):
    stacked(tf.zeros([B, T, F]), initial_state=(stacked.get_initial_state(B)[0],))
  with pytest.raises(ValueError, match=r"state\.c"):
    stacked(tf.zeros([B, T, F]), initial_state=(LSTMState(tf.zeros([B, 4]), tf.zeros([B, 2])),) * 2)
