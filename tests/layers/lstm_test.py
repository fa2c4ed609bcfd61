"""Tests for layers/lstm.py, the sequence layer.

Against the NumPy reference and keras.layers.LSTM; layouts, carried state, compilation, masking,
dropout and zoneout noise, distribution, configs and argument errors.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import numpy_reference
from layer_utils import (VARIANTS, built_lstm, cell_weights, copy_cell_weights, randomize_weights,
                         reference_kwargs)
from tbptt.layers import LSTM, LSTMState

# Every test runs on both implementations (tests/layers/conftest.py).
pytestmark = pytest.mark.usefixtures("implementation")

B, T, F, U = 3, 5, 4, 6
TOL = dict(rtol=1e-5, atol=1e-5)

lstm_of = functools.partial(built_lstm, LSTM, U, F)


def _normal(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _random_state(lstm, seed, batch=B):
  return LSTMState(h=tf.constant(_normal(seed, batch, lstm.cell.output_size)),
                   c=tf.constant(_normal(seed + 1, batch, U)))


# A batch whose rows are masked at the start, in the middle and at the end.
MASK = np.array([[True, True, True, True, True],
                 [False, True, False, True, False],
                 [True, True, True, False, False]])


# -- the NumPy reference ---------------------------------------------------------------------------

def _assert_matches_reference(lstm, x, state, outputs, final, mask=None):
  """outputs [B, T, out] and the final state equal the NumPy reference run from `state` (TOL)."""
  ref_out, ref_h, ref_c = numpy_reference.lstm_sequence(
      x, cell_weights(lstm.cell), state.h.numpy(), state.c.numpy(), mask=mask,
      **reference_kwargs(lstm.cell))
  np.testing.assert_allclose(outputs, ref_out, **TOL)
  np.testing.assert_allclose(final.h, ref_h, **TOL)
  np.testing.assert_allclose(final.c, ref_c, **TOL)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sequence_matches_numpy_reference(variant, compiled):
  lstm = lstm_of(**VARIANTS[variant])
  run = tf.function(lstm) if compiled else lstm
  x, state = _normal(10, B, T, F), _random_state(lstm, 11)
  outputs, final = run(tf.constant(x), initial_state=state)
  assert isinstance(final, LSTMState)
  assert outputs.shape == (B, T, lstm.cell.output_size)
  _assert_matches_reference(lstm, x, state, outputs, final)


# Inputs at least as wide as the cell are projected before the time loop, narrower ones inside it:
# both paths must compute the same function.
WIDE_F = 2 * U


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_wide_inputs_match_numpy_reference(variant, compiled):
  lstm = built_lstm(LSTM, U, WIDE_F, **VARIANTS[variant])
  run = tf.function(lstm) if compiled else lstm
  x, state = _normal(40, B, T, WIDE_F), _random_state(lstm, 41)
  outputs, final = run(tf.constant(x), initial_state=state, mask=tf.constant(MASK))
  _assert_matches_reference(lstm, x, state, outputs, final, mask=MASK)


def test_wide_inputs_match_keras_lstm_with_gradients():
  keras_lstm = keras.layers.LSTM(U, return_sequences=True, return_state=True, use_cudnn=False)
  keras_lstm(tf.zeros([B, 1, WIDE_F]))
  randomize_weights(keras_lstm.cell, 42)
  ours = built_lstm(LSTM, U, WIDE_F)
  copy_cell_weights(keras_lstm.cell, ours.cell)
  x = tf.constant(_normal(43, B, T, WIDE_F))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    k_out, k_h, k_c = keras_lstm(x)
    o_out, o_state = ours(x)
    k_loss = tf.reduce_sum(tf.sin(k_out)) + tf.reduce_sum(k_h * k_c)
    o_loss = tf.reduce_sum(tf.sin(o_out)) + tf.reduce_sum(o_state.h * o_state.c)
  np.testing.assert_allclose(o_out, k_out, **TOL)
  np.testing.assert_allclose(o_state.c, k_c, **TOL)
  k_grads = tape.gradient(k_loss, [x, keras_lstm.cell.kernel, keras_lstm.cell.recurrent_kernel,
                                   keras_lstm.cell.bias])
  o_grads = tape.gradient(o_loss, [x, ours.cell.kernel, ours.cell.recurrent_kernel, ours.cell.bias])
  for k_grad, o_grad in zip(k_grads, o_grads):
    np.testing.assert_allclose(o_grad, k_grad, **TOL)


def test_masked_sequence_matches_numpy_reference():
  lstm = lstm_of(**VARIANTS["everything"])
  x, state = _normal(12, B, T, F), _random_state(lstm, 13)
  outputs, final = lstm(x, initial_state=state, mask=tf.constant(MASK))
  _assert_matches_reference(lstm, x, state, outputs, final, mask=MASK)
  np.testing.assert_array_equal(outputs.numpy()[~MASK], 0.0)


def test_numpy_reference_matches_keras_lstm():
  keras_lstm = keras.layers.LSTM(U, return_sequences=True, return_state=True, use_cudnn=False)
  keras_lstm(tf.zeros([B, 1, F]))
  randomize_weights(keras_lstm.cell, 4)
  x = _normal(14, B, T, F)
  outputs, h, c = keras_lstm(x)
  ref_out, ref_h, ref_c = numpy_reference.lstm_sequence(x, cell_weights(keras_lstm.cell))
  np.testing.assert_allclose(outputs, ref_out, **TOL)
  np.testing.assert_allclose(h, ref_h, **TOL)
  np.testing.assert_allclose(c, ref_c, **TOL)


# -- keras.layers.LSTM -----------------------------------------------------------------------------

def _keras_twin(lstm):
  keras_lstm = keras.layers.LSTM(U, return_sequences=True, return_state=True, use_cudnn=False)
  keras_lstm(tf.zeros([B, 1, F]))
  copy_cell_weights(lstm.cell, keras_lstm.cell)
  return keras_lstm


def test_matches_keras_lstm_outputs_states_and_gradients():
  lstm = lstm_of()
  keras_lstm = _keras_twin(lstm)
  x = tf.constant(_normal(20, B, T, F))
  h0, c0 = _random_state(lstm, 21)
  probes = [tf.constant(_normal(22 + i, *shape)) for i, shape in
            enumerate([(B, T, U), (B, U), (B, U)])]

  def run(layer, call):
    with tf.GradientTape() as tape:
      tape.watch([x, h0, c0])
      results = call()
      loss = sum(tf.reduce_sum(r * p) for r, p in zip(results, probes))
    weights = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
    return results, tape.gradient(loss, [x, h0, c0] + weights)

  ours, our_grads = run(lstm, lambda: (lambda o, s: (o, s.h, s.c))(
      *lstm(x, initial_state=LSTMState(h0, c0))))
  theirs, their_grads = run(keras_lstm, lambda: keras_lstm(x, initial_state=[h0, c0]))
  for name, a, b in zip(["outputs", "h", "c"], ours, theirs):
    np.testing.assert_allclose(a, b, **TOL, err_msg=name)
  names = ["inputs", "h0", "c0", "kernel", "recurrent_kernel", "bias"]
  for name, a, b in zip(names, our_grads, their_grads):
    assert a is not None, name
    np.testing.assert_allclose(a, b, **TOL, err_msg=f"gradient w.r.t. {name}")


def test_masked_batch_final_state_matches_keras_lstm():
  lstm = lstm_of()
  keras_lstm = _keras_twin(lstm)
  x = _normal(25, B, T, F)
  outputs, final = lstm(x, mask=tf.constant(MASK))
  keras_out, keras_h, keras_c = keras_lstm(x, mask=tf.constant(MASK))
  np.testing.assert_allclose(final.h, keras_h, **TOL)
  np.testing.assert_allclose(final.c, keras_c, **TOL)
  np.testing.assert_allclose(outputs.numpy()[MASK], keras_out.numpy()[MASK], **TOL)


# -- layouts, carried state, compilation -----------------------------------------------------------

def test_time_major_equals_batch_major_transposed():
  kwargs = VARIANTS["everything"]
  lstm = lstm_of(**kwargs)
  time_major = lstm_of(time_major=True, **kwargs)
  copy_cell_weights(lstm.cell, time_major.cell)
  x, state = _normal(30, B, T, F), _random_state(lstm, 31)
  outputs, final = lstm(x, initial_state=state, mask=tf.constant(MASK))
  tm_outputs, tm_final = time_major(np.transpose(x, [1, 0, 2]), initial_state=state,
                                    mask=tf.constant(MASK.T))
  assert tm_outputs.shape == (T, B, lstm.cell.output_size)
  np.testing.assert_allclose(np.transpose(tm_outputs, [1, 0, 2]), outputs, **TOL)
  np.testing.assert_allclose(tm_final.h, final.h, **TOL)
  np.testing.assert_allclose(tm_final.c, final.c, **TOL)


def test_two_chunks_with_carried_state_equal_one_sequence():
  lstm = lstm_of(**VARIANTS["everything"])
  x, state = _normal(32, B, 2 * T, F), _random_state(lstm, 33)
  full, full_final = lstm(x, initial_state=state)
  first, carried = lstm(x[:, :T], initial_state=state)
  second, final = lstm(x[:, T:], initial_state=carried)
  np.testing.assert_allclose(tf.concat([first, second], 1), full, **TOL)
  np.testing.assert_allclose(final.h, full_final.h, **TOL)
  np.testing.assert_allclose(final.c, full_final.c, **TOL)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
def test_stateful_calls_equal_one_sequence_and_reset_restores_fresh(compiled):
  lstm = lstm_of(**VARIANTS["peepholes"])
  stateful = lstm_of(stateful=True, batch=B, **VARIANTS["peepholes"])
  copy_cell_weights(lstm.cell, stateful.cell)
  run = tf.function(stateful) if compiled else stateful
  x = _normal(34, B, 2 * T, F)
  full, full_final = lstm(x)
  first, _ = run(tf.constant(x[:, :T]))
  second, final = run(tf.constant(x[:, T:]))
  np.testing.assert_allclose(tf.concat([first, second], 1), full, **TOL)
  np.testing.assert_allclose(final.h, full_final.h, **TOL)
  np.testing.assert_allclose(final.c, full_final.c, **TOL)
  stateful.reset_state()
  again, _ = run(tf.constant(x[:, :T]))
  np.testing.assert_allclose(again, full[:, :T], **TOL)


def test_explicit_initial_state_wins_over_the_kept_state():
  lstm = lstm_of()
  stateful = lstm_of(stateful=True, batch=B)
  copy_cell_weights(lstm.cell, stateful.cell)
  x, state = _normal(35, B, T, F), _random_state(lstm, 36)
  stateful(x)
  outputs, final = stateful(x, initial_state=state)
  expected, expected_final = lstm(x, initial_state=state)
  np.testing.assert_allclose(outputs, expected, **TOL)
  following, _ = stateful(x)
  expected_following, _ = lstm(x, initial_state=expected_final)
  np.testing.assert_allclose(following, expected_following, **TOL)


# The kernel has no XLA lowering: under jit_compile=True 'auto' traces the loop.
@pytest.mark.expect_implementation("loop")
def test_xla_compiled_equals_eager():
  lstm = lstm_of(**VARIANTS["everything"])
  x, state = _normal(37, B, T, F), _random_state(lstm, 38)
  mask = tf.constant(MASK)
  expected, expected_final = lstm(x, initial_state=state, mask=mask)  # 'auto' eagerly: fused
  compiled = tf.function(lambda x, s, m: lstm(x, initial_state=s, mask=m), jit_compile=True)
  outputs, final = compiled(tf.constant(x), state, mask)
  assert lstm.resolved_implementation == "loop"
  np.testing.assert_allclose(outputs, expected, **TOL)
  np.testing.assert_allclose(final.h, expected_final.h, **TOL)
  np.testing.assert_allclose(final.c, expected_final.c, **TOL)


@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
def test_unknown_batch_and_time_sizes(time_major):
  lstm = lstm_of(time_major=time_major)
  run = tf.function(lstm, input_signature=[tf.TensorSpec([None, None, F], tf.float32)])
  for seed, (batch, steps) in enumerate([(2, 3), (4, 7)]):
    x = _normal(40 + seed, batch, steps, F)
    if time_major:
      x = np.transpose(x, [1, 0, 2])
    outputs, final = run(tf.constant(x))
    expected, expected_final = lstm(x)
    assert final.h.shape == (batch, U)
    np.testing.assert_allclose(outputs, expected, **TOL)
    np.testing.assert_allclose(final.c, expected_final.c, **TOL)
  symbolic_outputs, _ = run.get_concrete_function().structured_outputs
  assert symbolic_outputs.shape.as_list() == [None, None, U]


def test_mirrored_strategy_gives_each_replica_the_unreplicated_result():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  assert strategy.num_replicas_in_sync == 2
  with strategy.scope():
    lstm = lstm_of(**VARIANTS["layer_norm"])
  per_replica = [_normal(50 + r, B, T, F) for r in range(2)]
  inputs = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant(per_replica[ctx.replica_id_in_sync_group]))

  @tf.function
  def replicated(x):
    return strategy.run(lambda x: lstm(x), args=(x,))

  unreplicated = tf.function(lambda x: lstm(x))
  outputs, final = replicated(inputs)
  for x, out, h in zip(per_replica, strategy.experimental_local_results(outputs),
                       strategy.experimental_local_results(final.h)):
    expected, expected_final = unreplicated(tf.constant(x))
    np.testing.assert_allclose(out, expected, **TOL)
    np.testing.assert_allclose(h, expected_final.h, **TOL)


# -- outputs and options ---------------------------------------------------------------------------

def test_return_sequences_false_returns_the_final_h_and_return_state_false_only_outputs():
  kwargs = VARIANTS["projection"]
  lstm = lstm_of(**kwargs)
  last = lstm_of(return_sequences=False, **kwargs)
  bare = lstm_of(return_state=False, **kwargs)
  copy_cell_weights(lstm.cell, last.cell)
  copy_cell_weights(lstm.cell, bare.cell)
  x = _normal(55, B, T, F)
  outputs, final = lstm(x, mask=tf.constant(MASK))
  last_output, last_final = last(x, mask=tf.constant(MASK))
  assert last_output.shape == (B, 3)
  np.testing.assert_allclose(last_output, final.h, **TOL)
  np.testing.assert_allclose(last_final.c, final.c, **TOL)
  only_outputs = bare(x)
  assert isinstance(only_outputs, tf.Tensor)
  np.testing.assert_allclose(only_outputs, lstm(x)[0], **TOL)


def test_get_initial_state_and_cell():
  lstm = LSTM(U, num_proj=2)
  assert lstm.cell.units == U and lstm.cell.num_proj == 2
  state = lstm.get_initial_state(4)
  assert isinstance(state, LSTMState)
  assert state.h.shape == (4, 2) and state.c.shape == (4, U)
  assert not np.any(state.h) and not np.any(state.c)


# -- dropout and zoneout in training ---------------------------------------------------------------

def _diagonal_blocks(rng, size):
  """[size, 4 * size]: one random diagonal block per gate, so unit j reads only feature j."""
  return np.concatenate([np.diag(rng.normal(size=size)) for _ in range(4)], axis=1)


@pytest.mark.parametrize("on", ["inputs", "recurrent"])
def test_dropout_uses_one_mask_for_the_whole_sequence(on):
  rate = 0.5
  kwargs = dict(dropout=rate) if on == "inputs" else dict(recurrent_dropout=rate)
  size, batch = 4, 4
  lstm = built_lstm(LSTM, size, size, **kwargs)
  rng = np.random.default_rng(60)
  zeros = np.zeros([size, 4 * size])
  lstm.cell.kernel.assign(_diagonal_blocks(rng, size) if on == "inputs" else zeros)
  lstm.cell.recurrent_kernel.assign(zeros if on == "inputs" else _diagonal_blocks(rng, size))
  x = _normal(61, batch, T, size)
  h0 = _normal(62, batch, size)
  state = LSTMState(tf.constant(h0), tf.zeros([batch, size]))
  weights = cell_weights(lstm.cell)
  mask_arg = "input_mask" if on == "inputs" else "recurrent_mask"

  def reference(mask):
    return numpy_reference.lstm_sequence(x, weights, h0, None, **{mask_arg: mask})[0]

  # Unit j of the first step sees only element j of the mask, so the mask can be read off from it.
  dropped = reference(np.zeros([batch, size]))
  kept = reference(np.full([batch, size], 1 / (1 - rate)))
  masks = []
  for _ in range(2):
    outputs = lstm(x, initial_state=state, training=True)[0].numpy()
    is_kept = np.isclose(outputs[:, 0], kept[:, 0], **TOL)
    assert np.all(is_kept | np.isclose(outputs[:, 0], dropped[:, 0], **TOL))
    mask = is_kept / (1 - rate)
    np.testing.assert_allclose(outputs, reference(mask), **TOL,
                               err_msg="the same mask must apply at every step")
    masks.append(mask)
  assert 0 < np.count_nonzero(masks[0]) < masks[0].size
  assert not np.array_equal(masks[0], masks[1]), "each call must draw a new mask"
  inference = lstm(x, initial_state=state)[0]
  np.testing.assert_allclose(inference, reference(np.ones([batch, size])), **TOL)


def _seeded_lstm(**kwargs):
  """A built LSTM with random weights (always the same) and the given noise seed."""
  lstm = LSTM(U, **kwargs)
  lstm(tf.zeros([2, 1, F]))
  randomize_weights(lstm.cell, 0)
  return lstm


def test_weight_drop_uses_one_recurrent_kernel_mask_per_sequence():
  rate = 0.5
  # The same noise seed draws the same masks in the same order.
  lstm, twin = (_seeded_lstm(weight_drop=rate, seed=5) for _ in range(2))
  x, state = _normal(65, B, T, F), _random_state(lstm, 66)
  weights = cell_weights(lstm.cell)

  def reference(kernel_mask):
    masked = dict(weights, recurrent_kernel=weights["recurrent_kernel"] * kernel_mask)
    return numpy_reference.lstm_sequence(x, masked, state.h.numpy(), state.c.numpy())[0]

  masks = []
  for _ in range(2):
    outputs = lstm(x, initial_state=state, training=True)[0]
    mask = twin.cell.recurrent_kernel_mask(training=True).numpy()
    assert mask.shape == (U, 4 * U)
    assert set(np.unique(mask)) == {0.0, 1 / (1 - rate)}, "entries are dropped or scaled"
    # One [out, 4u] mask for every row and every step of the sequence.
    np.testing.assert_allclose(outputs, reference(mask), **TOL)
    masks.append(mask)
  assert 0.3 < np.mean(masks[0] == 0) < 0.7
  assert not np.array_equal(masks[0], masks[1]), "each sequence must draw a new mask"
  np.testing.assert_allclose(lstm(x, initial_state=state)[0], reference(1.0), **TOL,
                             err_msg="inference reads the whole recurrent kernel")


def test_weight_drop_gradient_reaches_only_the_kept_recurrent_weights():
  lstm, twin = (_seeded_lstm(weight_drop=0.5, seed=6) for _ in range(2))
  x, state = _normal(67, B, T, F), _random_state(lstm, 68)
  with tf.GradientTape() as tape:
    outputs = lstm(x, initial_state=state, training=True)[0]
    loss = tf.reduce_sum(tf.sin(outputs))
  grad = tape.gradient(loss, lstm.cell.recurrent_kernel).numpy()
  mask = twin.cell.recurrent_kernel_mask(training=True).numpy()
  assert np.all(grad[mask == 0] == 0) and np.all(grad[mask != 0] != 0)


def test_zoneout_in_training_draws_a_fresh_mask_per_step():
  lstm = lstm_of(zoneout_hidden=0.5)
  steps = 8
  x, state = _normal(63, B, steps, F), _random_state(lstm, 64)
  outputs = lstm(x, initial_state=state, training=True)[0].numpy()
  weights = dict(cell_weights(lstm.cell))
  h, c = state.h.numpy(), state.c.numpy()
  kept = []
  for t in range(steps):
    # The carried h is the zoned-out output, so c can be followed exactly from the outputs.
    h_new, c = numpy_reference.lstm_step(x[:, t], h, c, weights)
    is_kept = np.isclose(outputs[:, t], h, rtol=0, atol=1e-7)
    assert np.all(is_kept | np.isclose(outputs[:, t], h_new, **TOL))
    kept.append(is_kept)
    h = outputs[:, t]
  kept = np.stack(kept)
  assert 0.25 < kept.mean() < 0.75
  assert len({k.tobytes() for k in kept}) > steps // 2, "zoneout masks must differ between steps"


# -- configuration and errors ----------------------------------------------------------------------

def test_config_round_trip():
  lstm = lstm_of(time_major=True, return_sequences=False, stateful=True,
                 **VARIANTS["everything"], dropout=0.1, recurrent_dropout=0.2, seed=7)
  config = lstm.get_config()
  clone = LSTM.from_config(config)
  assert clone.get_config() == config
  assert clone.cell.get_config() == {**lstm.cell.get_config()}
  assert keras.saving.get_registered_object("tbptt>LSTM") is LSTM


@pytest.mark.parametrize("kwargs, argument", [
    (dict(units=0), "units"), (dict(units=-1), "units"),
    (dict(units=U, cell_clip=-0.5), "cell_clip"),
    (dict(units=U, num_proj=2, proj_clip=0), "proj_clip"),
    (dict(units=U, dropout=1.0), "dropout"),
    (dict(units=U, recurrent_dropout=-0.1), "recurrent_dropout"),
    (dict(units=U, zoneout_cell=2.0), "zoneout_cell"),
    (dict(units=U, zoneout_hidden=1.0), "zoneout_hidden"),
])
def test_bad_constructor_argument_raises_value_error_naming_it(kwargs, argument):
  with pytest.raises(ValueError, match=argument):
    LSTM(**kwargs)


def test_bad_inputs_raise_value_error_naming_the_argument():
  lstm = lstm_of(num_proj=2)
  with pytest.raises(ValueError, match=r"inputs.*rank 3.*\(3, 4\)"):
    lstm(tf.zeros([B, F]))
  with pytest.raises(ValueError, match=rf"inputs.*{F}.*got 9"):
    lstm(tf.zeros([B, T, 9]))
  with pytest.raises(ValueError, match=r"state.*LSTMState"):
    lstm(tf.zeros([B, T, F]), initial_state=tf.zeros([B, 2]))
  with pytest.raises(ValueError, match=r"state\.h.*\[batch, 2\].*\(3, 6\)"):
    lstm(tf.zeros([B, T, F]), initial_state=LSTMState(tf.zeros([B, U]), tf.zeros([B, U])))
  with pytest.raises(ValueError, match=r"state\.c.*\(3, 2\)"):
    lstm(tf.zeros([B, T, F]), initial_state=LSTMState(tf.zeros([B, 2]), tf.zeros([B, 2])))
  with pytest.raises(ValueError, match=r"reset_state.*stateful"):
    lstm.reset_state()


def test_initial_state_with_another_batch_size_raises_value_error():
  lstm = lstm_of()
  other_batch = LSTMState(tf.zeros([B + 1, U]), tf.zeros([B + 1, U]))
  with pytest.raises(ValueError, match=r"state.*batch"):
    lstm(tf.zeros([B, T, F]), initial_state=other_batch)
  with pytest.raises(ValueError, match=r"state.*batch"):
    lstm.cell(tf.zeros([B, F]), other_batch)
