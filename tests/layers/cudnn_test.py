"""The cuDNN path on a CPU: the decision, and the call into Keras's routine with our weights.

No GPU runs these tests. The layer is told it runs on a GPU, and `tf.raw_ops.CudnnRNNV3` (the op
Keras's `lstm` routine calls there) is replaced by `fake_cudnn_rnn_v3`, which reads its parameters
in cuDNN's documented canonical layout and honours its sequence lengths. So the weight conversion
Keras applies to our weights, the mask-to-length path and the layout of inputs and states are
checked against the loop, outputs and gradients; cuDNN's own arithmetic on a GPU is not.
"""

import importlib
import inspect

import numpy as np
import pytest
import tensorflow as tf

from tbptt.layers import LSTM, dispatch

keras_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")

TOL = dict(rtol=1e-5, atol=1e-6)


def fake_cudnn_rnn_v3(*, input, input_h, input_c, params, is_training, rnn_mode,  # noqa: A002
                      sequence_lengths, time_major, **unused):
  """CudnnRNNV3 for a one-layer unidirectional LSTM, in TensorFlow ops (so it has gradients).

  params is cuDNN's canonical layout: the input weights W_i, W_f, W_c, W_o (each [u, F]), the
  recurrent weights R_i..R_o ([u, u]), the input biases and the recurrent biases (4 x [u] each). A
  row's steps at or after its sequence length output zeros and keep its state.
  """
  assert rnn_mode == "lstm" and is_training
  x = input if time_major else tf.transpose(input, [1, 0, 2])  # [T, B, F]
  h, c = (s[0] if time_major else s[:, 0] for s in (input_h, input_c))  # [B, u]
  features, units = x.shape[-1], h.shape[-1]
  parts = tf.split(params, [units * features] * 4 + [units * units] * 4 + [units] * 8)
  w = tf.concat([tf.reshape(p, [units, features]) for p in parts[:4]], 0)  # [4u, F]
  r = tf.concat([tf.reshape(p, [units, units]) for p in parts[4:8]], 0)  # [4u, u]
  b = tf.concat(parts[8:12], 0) + tf.concat(parts[12:16], 0)
  outputs = []
  for t in range(x.shape[0]):
    z = tf.matmul(x[t], w, transpose_b=True) + tf.matmul(h, r, transpose_b=True) + b
    i, f, g, o = tf.split(z, 4, axis=1)
    c_new = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    h_new = tf.sigmoid(o) * tf.tanh(c_new)
    live = (t < sequence_lengths)[:, None]
    c, h = tf.where(live, c_new, c), tf.where(live, h_new, h)
    outputs.append(tf.where(live, h_new, tf.zeros_like(h_new)))
  outputs = tf.stack(outputs)
  if time_major:
    return outputs, h[None], c[None], tf.zeros([0]), tf.zeros([0])
  return tf.transpose(outputs, [1, 0, 2]), h[:, None], c[:, None], tf.zeros([0]), tf.zeros([0])


@pytest.fixture
def fake_gpu(monkeypatch):
  """The layers see a GPU and Keras finds one; cuDNN is `fake_cudnn_rnn_v3`. Returns the number of
  calls so far (a callable)."""
  calls = []

  def cudnn(**kwargs):
    calls.append(1)
    return fake_cudnn_rnn_v3(**kwargs)
  monkeypatch.setattr(dispatch, "device_type", lambda tensor: "GPU")
  monkeypatch.setattr(keras_rnn, "_is_gpu_available", lambda: True)
  monkeypatch.setattr(tf.raw_ops, "CudnnRNNV3", cudnn)
  return lambda: len(calls)


def _pair(units=5, features=3, **kwargs):
  """A layer asking for `implementation` (default 'auto') and a loop layer with its weights."""
  x = tf.random.stateless_normal([4, 6, features], seed=[3, 4])
  layer = LSTM(units, **kwargs)
  layer(x)
  loop = LSTM(units, implementation="loop")
  loop(x)
  loop.set_weights(layer.get_weights())
  return layer, loop, x


def _run(layer, x, state, mask=None):
  with tf.GradientTape() as tape:
    tape.watch([x, *state])
    outputs, final = layer(x, initial_state=state, mask=mask)
    loss = tf.reduce_sum(outputs * tf.range(1.0, 6.0)) + tf.reduce_sum(final.c)
  grads = tape.gradient(loss, [x, *state, *layer.trainable_variables])
  return [outputs, *final] + grads


def test_keras_routine_takes_the_arguments_we_pass():
  parameters = inspect.signature(keras_rnn.lstm).parameters
  assert list(parameters)[:9] == ["inputs", "initial_state_h", "initial_state_c", "mask", "kernel",
                                  "recurrent_kernel", "bias", "activation",
                                  "recurrent_activation"]
  assert {"return_sequences", "time_major"} <= set(parameters)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_auto_on_a_gpu_runs_cudnn_and_equals_the_loop(fake_gpu, compiled):
  layer, loop, x = _pair()
  state = loop.get_initial_state(4)
  state = type(state)(*(tf.random.stateless_normal(s.shape, seed=[5, i])
                        for i, s in enumerate(state)))
  run = tf.function(_run) if compiled else _run
  got = run(layer, x, state)
  assert layer.resolved_implementation == "cudnn" and fake_gpu() >= 1
  want = _run(loop, x, state)
  assert len(got) == len(want) == 3 + 3 + 3
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, **TOL)


@pytest.mark.parametrize("rows, runs_cudnn", [
    ([6, 6, 6, 6], True),
    ([6, 3, 1, 5], True),
    ([6, 0, 2, 4], False),  # an empty row: cuDNN rejects a zero length
    (None, False),  # a gap inside a row: not right-padded
])
def test_a_mask_runs_cudnn_only_when_right_padded(fake_gpu, rows, runs_cudnn):
  layer, loop, x = _pair()
  if rows is None:
    mask = tf.constant([[True, False, True, True, True, True]] + [[True] * 6] * 3)
  else:
    mask = tf.sequence_mask(rows, 6)
  state = loop.get_initial_state(4)
  before = fake_gpu()  # building the layer ran it once, without a mask
  got = _run(layer, x, state, mask)
  assert (fake_gpu() > before) == runs_cudnn
  for g, w in zip(got, _run(loop, x, state, mask)):
    np.testing.assert_allclose(g, w, **TOL)


def test_auto_on_a_gpu_runs_the_loop_for_other_variants(fake_gpu):
  for kwargs in (dict(use_peepholes=True), dict(layer_norm=True), dict(num_proj=2)):
    layer = LSTM(4, **kwargs)
    layer(tf.zeros([2, 3, 3]))
    assert layer.resolved_implementation == "loop", kwargs
  assert fake_gpu() == 0


def test_cudnn_request_raises_on_a_cpu_and_for_other_variants(monkeypatch):
  with pytest.raises(ValueError, match="'cudnn' needs a GPU, the layer runs on CPU"):
    LSTM(4, implementation="cudnn")(tf.zeros([2, 3, 3]))
  monkeypatch.setattr(dispatch, "device_type", lambda tensor: "GPU")
  with pytest.raises(ValueError, match="plain variant only, the layer sets use_peepholes"):
    LSTM(4, implementation="cudnn", use_peepholes=True)(tf.zeros([2, 3, 3]))


def test_input_dropout_keeps_cudnn_and_recurrent_dropout_does_not(fake_gpu):
  layer = LSTM(4, dropout=0.5)
  layer(tf.ones([2, 3, 3]), training=True)
  assert layer.resolved_implementation == "cudnn"
  layer = LSTM(4, recurrent_dropout=0.5)
  layer(tf.ones([2, 3, 3]), training=True)
  assert layer.resolved_implementation == "loop"
