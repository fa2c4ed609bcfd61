"""Which implementation a layer runs: the decision table, XLA, export, Keras's auto-jit, GPUs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbptt.layers import LSTM, StackedLSTM, dispatch, kernels

CHOOSE = dict(unsupported=None, kernel_error=None, xla=False, export=False, device="CPU",
              cudnn_ok=False)


@pytest.mark.parametrize("requested, overrides, expected", [
    ("auto", {}, "fused"),
    ("fused", {}, "fused"),
    ("loop", {}, "loop"),
    ("auto", dict(xla=True), "loop"),
    ("fused", dict(xla=True), "loop"),
    ("auto", dict(export=True), "loop"),
    ("fused", dict(export=True), "loop"),
    ("auto", dict(unsupported="mixed precision"), "loop"),
    ("auto", dict(kernel_error="no compiler"), "loop"),
    ("auto", dict(device="GPU", cudnn_ok=True), "cudnn"),
    ("auto", dict(device="GPU", cudnn_ok=False), "loop"),
    ("loop", dict(device="GPU", cudnn_ok=True), "loop"),
    ("cudnn", dict(device="GPU", cudnn_ok=True), "cudnn"),
    ("cudnn", dict(device="GPU", cudnn_ok=True, xla=True), "loop"),
    ("cudnn", dict(device="GPU", cudnn_ok=True, export=True), "loop"),
])
def test_choose(requested, overrides, expected):
  implementation, reason = dispatch.choose(requested, **dict(CHOOSE, **overrides))
  assert implementation == expected and reason


@pytest.mark.parametrize("overrides, error, match", [
    (dict(unsupported="mixed precision"), ValueError, "fused.*mixed precision"),
    (dict(device="GPU"), ValueError, "CPU code only.*GPU"),
    (dict(kernel_error="c++ exited 1"), RuntimeError, "not built: c\\+\\+ exited 1"),
])
def test_fused_request_that_cannot_run_raises(overrides, error, match):
  with pytest.raises(error, match=match):
    dispatch.choose("fused", **dict(CHOOSE, **overrides))


@pytest.mark.parametrize("overrides, match", [
    (dict(cudnn_ok=True), "'cudnn' needs a GPU, the layer runs on CPU"),
    (dict(device="GPU", cudnn_why="the layer sets layer_norm"), "cannot run.*sets layer_norm"),
])
def test_cudnn_request_that_cannot_run_raises(overrides, match):
  with pytest.raises(ValueError, match=match):
    dispatch.choose("cudnn", **dict(CHOOSE, **overrides))


def test_unknown_implementation_raises_naming_it():
  with pytest.raises(ValueError, match="implementation must be one of .*'cuda'"):
    LSTM(4, implementation="cuda")
  with pytest.raises(ValueError, match="implementation must be one of"):
    StackedLSTM(4, 2, implementation="")


def test_cudnn_takes_only_the_plain_variant():
  def cell(**kwargs):
    layer = LSTM(4, **kwargs)
    layer(tf.zeros([1, 1, 3]))
    return layer.cell
  assert dispatch.cudnn_applicable(cell()) and dispatch.cudnn_unsupported(cell()) is None
  assert dispatch.cudnn_applicable(cell(dropout=0.1))  # input dropout is applied before
  for kwargs in (dict(use_peepholes=True), dict(num_proj=2), dict(cell_clip=1.0),
                 dict(layer_norm=True), dict(zoneout_cell=0.1), dict(zoneout_hidden=0.1),
                 dict(recurrent_dropout=0.1)):
    assert not dispatch.cudnn_applicable(cell(**kwargs)), kwargs
    assert list(kwargs)[0] in dispatch.cudnn_unsupported(cell(**kwargs))


def test_auto_runs_fused_eagerly_and_the_loop_under_jit_compile():
  assert kernels.available(), kernels.error()
  lstm = LSTM(4)
  x = tf.random.normal([2, 3, 3])
  eager, _ = lstm(x)
  assert lstm.resolved_implementation == "fused"
  compiled, _ = tf.function(lstm, jit_compile=True)(x)
  assert lstm.resolved_implementation == "loop"
  np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)


def test_fused_layers_tell_keras_not_to_auto_jit():
  assert not LSTM(4).supports_jit and not StackedLSTM(4, 2).supports_jit
  assert LSTM(4, implementation="loop").supports_jit
  inputs = keras.Input((3, 2))
  model = keras.Model(inputs, LSTM(4, return_state=False)(inputs))
  model.compile(loss="mse", optimizer="sgd")
  assert model.jit_compile is False


def test_export_scope_and_saved_model_tracing_run_the_loop(tmp_path):
  lstm = LSTM(4, implementation="fused")
  x = tf.random.normal([2, 3, 3])
  lstm(x)
  with dispatch.export_scope():
    tf.function(lambda x: lstm(x))(x)
  assert lstm.resolved_implementation == "loop"
  module = tf.Module()
  module.lstm = lstm
  module.run = tf.function(lambda x: lstm(x)[0], input_signature=[tf.TensorSpec([2, 3, 3])])
  tf.saved_model.save(module, str(tmp_path / "model"))  # traces inside tf.saved_model.save
  assert lstm.resolved_implementation == "loop"
  graph = module.run.get_concrete_function().graph.as_graph_def()
  ops = {node.op for f in graph.library.function for node in f.node_def}
  assert not any(op.startswith("TbpttLstm") for op in ops)


def test_mixed_precision_fused_request_raises_and_auto_runs_the_loop():
  policy = keras.mixed_precision.Policy("mixed_float16")
  with pytest.raises(ValueError, match="fused.*mixed_float16"):
    LSTM(4, implementation="fused", dtype=policy)(tf.zeros([1, 2, 3]))
  lstm = LSTM(4, dtype=policy)
  lstm(tf.zeros([1, 2, 3]))
  assert lstm.resolved_implementation == "loop"


def test_resolution_is_logged_once_per_change(caplog):
  lstm = LSTM(4, name="logged")
  x = tf.zeros([1, 2, 3])
  with caplog.at_level("DEBUG", logger="tbptt.layers.lstm"):
    lstm(x)
    lstm(x)
  lines = [r.getMessage() for r in caplog.records if "logged" in r.getMessage()]
  assert lines == ["logged runs implementation='fused' (requested 'auto': kernel built and "
                   "applicable)"]


def test_stacked_lstm_reports_each_layers_implementation():
  stacked = StackedLSTM(4, 2, implementation="loop")
  assert stacked.implementations == (None, None)
  stacked(tf.zeros([1, 2, 3]))
  assert stacked.implementations == ("loop", "loop")
  assert StackedLSTM.from_config(stacked.get_config()).implementation == "loop"
