"""Tests for layers/lstm_cell.py: one step against the NumPy reference, weights, noise, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import numpy_reference
from layer_utils import VARIANTS, cell_weights, randomize_weights, reference_kwargs, unclipped
from tbptt.layers import LSTMCell, LSTMState

B, F, U = 3, 4, 5


def _built_cell(seed=0, **kwargs):
  cell = LSTMCell(U, **kwargs)
  out = cell.output_size
  cell(tf.zeros([B, F]), LSTMState(tf.zeros([B, out]), tf.zeros([B, U])))
  randomize_weights(cell, seed)
  return cell


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_steps_match_numpy_reference(variant, compiled):
  cell = _built_cell(**VARIANTS[variant])
  step = tf.function(lambda x, s: cell(x, s)) if compiled else cell
  rng = np.random.default_rng(1)
  out_size = cell.output_size
  h = rng.normal(size=[B, out_size]).astype(np.float32)
  c = rng.normal(size=[B, U]).astype(np.float32)
  w, ref_kwargs = cell_weights(cell), reference_kwargs(cell)
  clip_binds = False
  for _ in range(3):
    x = rng.normal(size=[B, F]).astype(np.float32)
    output, state = step(tf.constant(x), LSTMState(tf.constant(h), tf.constant(c)))
    assert isinstance(state, LSTMState)
    assert output.shape == (B, out_size) and state.h.shape == (B, out_size)
    assert state.c.shape == (B, U)
    h_ref, c_ref = numpy_reference.lstm_step(x, h, c, w, **ref_kwargs)
    np.testing.assert_allclose(output, h_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state.h, h_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state.c, c_ref, rtol=1e-5, atol=1e-5)
    h_free, c_free = numpy_reference.lstm_step(x, h, c, w, **unclipped(ref_kwargs))
    clip_binds |= not (np.allclose(h_free, h_ref) and np.allclose(c_free, c_ref))
    h, c = state.h.numpy(), state.c.numpy()
  if cell.cell_clip or cell.proj_clip:
    assert clip_binds, "the clip values never bind: the test would not see a missing clip"


def test_weight_shapes_of_every_variant():
  cell = _built_cell(**VARIANTS["everything"])
  shapes = {name: tuple(v.shape) for name, v in cell_weights(cell).items()}
  assert shapes == {
      "kernel": (F, 4 * U), "recurrent_kernel": (3, 4 * U), "bias": (4 * U,),
      "peephole_i": (U,), "peephole_f": (U,), "peephole_o": (U,), "projection": (U, 3),
      "input_norm_gamma": (4 * U,), "input_norm_beta": (4 * U,),
      "recurrent_norm_gamma": (4 * U,), "recurrent_norm_beta": (4 * U,),
      "cell_norm_gamma": (U,), "cell_norm_beta": (U,)}
  plain = _built_cell()
  assert sorted(cell_weights(plain)) == ["bias", "kernel", "recurrent_kernel"]
  assert len(plain.trainable_weights) == 3


@pytest.mark.parametrize("unit_forget_bias", [True, False])
def test_unit_forget_bias_initialises_only_the_forget_slice(unit_forget_bias):
  cell = LSTMCell(U, unit_forget_bias=unit_forget_bias)
  cell(tf.zeros([1, F]), cell.get_initial_state(1))
  expected = np.zeros(4 * U)
  if unit_forget_bias:
    expected[U:2 * U] = 1.0
  np.testing.assert_array_equal(cell.bias.numpy(), expected)


def test_layer_norm_weights_start_as_identity():
  cell = LSTMCell(U, layer_norm=True)
  cell(tf.zeros([1, F]), cell.get_initial_state(1))
  for prefix in ("input_norm", "recurrent_norm", "cell_norm"):
    np.testing.assert_array_equal(getattr(cell, f"{prefix}_gamma").numpy(), 1.0)
    np.testing.assert_array_equal(getattr(cell, f"{prefix}_beta").numpy(), 0.0)


def test_zoneout_in_training_keeps_each_unit_or_updates_it():
  cell = _built_cell(zoneout_cell=0.5, zoneout_hidden=0.5, seed=3)
  rng = np.random.default_rng(2)
  h = rng.normal(size=[B, U]).astype(np.float32)
  c = rng.normal(size=[B, U]).astype(np.float32)
  x = rng.normal(size=[B, F]).astype(np.float32)
  no_zoneout = dict(reference_kwargs(cell), zoneout_cell=0.0, zoneout_hidden=0.0)
  h_new, c_new = numpy_reference.lstm_step(x, h, c, cell_weights(cell), **no_zoneout)
  kept_masks = []
  for _ in range(8):
    _, state = cell(tf.constant(x), LSTMState(tf.constant(h), tf.constant(c)), training=True)
    for got, prev, new in ((state.h.numpy(), h, h_new), (state.c.numpy(), c, c_new)):
      kept = np.isclose(got, prev, rtol=0, atol=1e-6)
      updated = np.isclose(got, new, rtol=1e-5, atol=1e-5)
      assert np.all(kept | updated), "zoneout must either keep the previous value or update it"
      kept_masks.append(kept)
  kept_masks = np.stack(kept_masks)
  assert 0.25 < kept_masks.mean() < 0.75
  assert len({m.tobytes() for m in kept_masks}) > 2, "zoneout masks must be drawn afresh"


def test_training_without_noise_equals_inference():
  cell = _built_cell(**VARIANTS["peepholes_projection_clips"])
  x = tf.random.normal([B, F], seed=1)
  state = cell.get_initial_state(B)
  a, sa = cell(x, state, training=True)
  b, sb = cell(x, state, training=False)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(sa.c, sb.c)


@pytest.mark.parametrize("variant", ["plain", "layer_norm", "everything"])
def test_in_loop_pieces_equal_the_hoisted_step(variant):
  # LSTM projects narrow inputs inside its loop (project_step) and broadcasts the per-unit weights
  # to [B, N] (step_weights(batch_size=B)); both must give the step, and its gradients, of the plain
  # path.
  cell = _built_cell(**VARIANTS[variant])
  x = tf.random.normal([B, F], seed=2)
  state = LSTMState(tf.random.normal([B, cell.output_size], seed=3),
                    tf.random.normal([B, U], seed=4))

  def run(in_loop):
    with tf.GradientTape() as tape:
      if in_loop:
        weights = cell.step_weights(with_input_weights=True, batch_size=B)
        xz = cell.project_step(x, weights)
      else:
        weights = cell.step_weights()
        xz = cell.input_projection(x)
      output, new_state = cell.recurrent_step(xz, state, weights)
      loss = tf.reduce_sum(tf.sin(output)) + tf.reduce_sum(tf.cos(new_state.c))
    return output, new_state.c, tape.gradient(loss, cell.trainable_variables)

  hoisted, in_loop = run(False), run(True)
  if variant != "plain":
    per_unit = cell.step_weights(batch_size=B)["cell_norm"][0]
    assert per_unit.shape == (B, U), "per-unit weights are broadcast to [B, U]"
  np.testing.assert_allclose(in_loop[0], hoisted[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(in_loop[1], hoisted[1], rtol=1e-6, atol=1e-6)
  for variable, a, b in zip(cell.trainable_variables, in_loop[2], hoisted[2]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=variable.name)


def test_state_size_and_initial_state():
  cell = LSTMCell(U, num_proj=2)
  state = cell.get_initial_state(4)
  assert isinstance(state, LSTMState)
  assert state.h.shape == (4, 2) and state.c.shape == (4, U)
  assert not np.any(state.h) and not np.any(state.c)


def test_config_round_trip_rebuilds_the_same_cell():
  cell = _built_cell(**VARIANTS["everything"], layer_norm_epsilon=1e-4, unit_forget_bias=False,
                     dropout=0.1, recurrent_dropout=0.2, kernel_regularizer="l2")
  config = cell.get_config()
  clone = LSTMCell.from_config(config)
  assert clone.get_config() == config
  state = LSTMState(tf.ones([B, 3]), tf.ones([B, U]))
  x = tf.random.normal([B, F], seed=2)
  clone(x, state)
  for name, value in cell_weights(cell).items():
    getattr(clone, name).assign(value)
  expected, _ = cell(x, state)
  got, _ = clone(x, state)
  np.testing.assert_array_equal(got, expected)


def test_config_is_registered_for_deserialisation():
  cell = LSTMCell(U, use_peepholes=True)
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cell))
  assert type(restored) is LSTMCell and restored.use_peepholes


@pytest.mark.parametrize("kwargs, argument", [
    (dict(units=0), "units"), (dict(units=-3), "units"), (dict(units=2.5), "units"),
    (dict(units=U, cell_clip=0.0), "cell_clip"), (dict(units=U, cell_clip=-1.0), "cell_clip"),
    (dict(units=U, num_proj=2, proj_clip=0.0), "proj_clip"),
    (dict(units=U, num_proj=0), "num_proj"),
    (dict(units=U, dropout=1.0), "dropout"), (dict(units=U, dropout=-0.1), "dropout"),
    (dict(units=U, recurrent_dropout=1.5), "recurrent_dropout"),
    (dict(units=U, zoneout_cell=1.0), "zoneout_cell"),
    (dict(units=U, zoneout_hidden=-0.5), "zoneout_hidden"),
])
def test_bad_constructor_argument_raises_value_error_naming_it(kwargs, argument):
  with pytest.raises(ValueError, match=argument) as error:
    LSTMCell(**kwargs)
  bad_value = kwargs[argument]
  assert str(bad_value) in str(error.value), "the message must show the received value"


def test_bad_inputs_raise_value_error_naming_the_argument():
  cell = _built_cell()
  state = cell.get_initial_state(B)
  with pytest.raises(ValueError, match=r"inputs.*rank 2.*\(3, 2, 4\)"):
    cell(tf.zeros([B, 2, F]), state)
  with pytest.raises(ValueError, match=rf"{F}.*got 7"):
    cell(tf.zeros([B, 7]), state)
  with pytest.raises(ValueError, match=r"state"):
    cell(tf.zeros([B, F]), (state.h,))
  with pytest.raises(ValueError, match=r"state"):
    cell(tf.zeros([B, F]), {"h": state.h, "c": state.c})
  with pytest.raises(ValueError, match=rf"state\.c.*{U}.*\(3, 6\)"):
    cell(tf.zeros([B, F]), LSTMState(state.h, tf.zeros([B, U + 1])))
  with pytest.raises(ValueError, match=r"state\.h"):
    cell(tf.zeros([B, F]), LSTMState(tf.zeros([B, U, 1]), state.c))
