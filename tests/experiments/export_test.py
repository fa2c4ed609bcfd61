"""Tests for experiments/export.py: the streaming SavedModel reloads and matches the model step by
step."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.data.corpus import TextCorpus
from tbptt.experiments.export import export
from tbptt.experiments.language_model import LanguageModel, LanguageModelTask
from tbptt.layers import LSTM
from tbptt.trainer.task import Task


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("run"))
  task = LanguageModelTask(
      model_dir,
      corpus_fn=lambda model_dir: TextCorpus(model_dir, train_path="stdlib", valid_path="stdlib",
                                             batch_size=2, seq_len=8, stdlib_bytes=100_000),
      model_fn=lambda vocab_size: LanguageModel(vocab_size, units=8, num_layers=2, num_proj=4))
  task.write_assets()
  path = export(task, model_dir)
  return task, path, tf.saved_model.load(path)


def test_export_layout(exported):
  task, path, _ = exported
  assert sorted(os.listdir(path)) == sorted(
      ["assets", "assets.extra", "fingerprint.pb", "saved_model.pb", "variables"])
  with open(os.path.join(path, "assets.extra", "vocab.json")) as f:
    assert json.load(f)["tokens"] == task.vocab.tokens
  assert not [p for p in os.listdir(os.path.dirname(path)) if ".tmp-" in p]


def test_reloaded_model_streams_like_the_model(exported):
  task, _, loaded = exported
  ids = tf.constant(np.random.default_rng(0).integers(0, task.vocab.size, (3, 9)), tf.int32)
  state, ref_state = loaded.initial_state(3), task.initial_state(3)
  for t in range(0, 9, 3):  # three chunks, the state carried between them
    outputs, state = loaded.step(ids[:, t:t + 3], state)
    expected, ref_state = task.model(ids[:, t:t + 3], ref_state)
    np.testing.assert_allclose(outputs, expected, rtol=1e-6, atol=1e-6)
  for a, b in zip(tf.nest.flatten(state), tf.nest.flatten(ref_state)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert [tuple(s.shape) for s in tf.nest.flatten(state)] == [(3, 4), (3, 8)] * 2


@pytest.mark.parametrize("convert", [np.int32, np.int64, tf.int64], ids=str)
def test_step_takes_ids_of_either_integer_width(exported, convert):
  task, _, loaded = exported
  ids = [[1, 2, 3], [4, 5, 6]]  # np.array(ids) is int64 on Linux; tf.data pipelines give int64 too.
  ids = tf.constant(ids, convert) if isinstance(convert, tf.DType) else np.array(ids, convert)
  outputs, state = loaded.step(ids, loaded.initial_state(2))
  expected, expected_state = task.model(tf.cast(ids, tf.int32), task.initial_state(2))
  np.testing.assert_allclose(outputs, expected, rtol=1e-6, atol=1e-6)
  for a, b in zip(tf.nest.flatten(state), tf.nest.flatten(expected_state)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_step_rejects_what_it_cannot_take(exported):
  _, _, loaded = exported
  with pytest.raises((TypeError, ValueError)):
    loaded.step(np.array([["a", "b"]]), loaded.initial_state(1))


def test_export_loads_and_runs_in_a_process_without_this_package(exported):
  # The layers run a C++ op of their own where it is built; an export traces the graph loop.
  _, path, _ = exported
  code = ("import sys, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
          "f = m.signatures['serving_default']; i = m.signatures['initial_state']; "
          "init = i(batch_size=tf.constant(2)); "
          "r = f(inputs=tf.constant([[1, 2], [3, 4]], tf.int32), **init); "
          "assert not [k for k in sys.modules if k.startswith('tbptt')]; print('ok')")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                          env=env, timeout=300, cwd="/")
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_flat_serving_signatures(exported):
  task, _, loaded = exported
  init = loaded.signatures["initial_state"](batch_size=tf.constant(2))
  assert sorted(init) == ["state_0", "state_1", "state_2", "state_3"]
  ids = tf.constant([[1, 2, 3], [4, 5, 6]], tf.int32)
  result = loaded.signatures["serving_default"](inputs=ids, **init)
  expected, state = task.model(ids, task.initial_state(2))
  np.testing.assert_allclose(result["outputs"], expected, rtol=1e-6, atol=1e-6)
  for i, t in enumerate(tf.nest.flatten(state)):
    np.testing.assert_allclose(result[f"state_{i}"], t, rtol=1e-6, atol=1e-6)


def test_export_replaces_an_older_export(exported):
  task, path, _ = exported
  model_dir = os.path.dirname(path)
  stale = os.path.join(path, "stale.txt")
  open(stale, "w").close()
  export(task, model_dir)
  assert not os.path.exists(stale) and os.path.exists(os.path.join(path, "saved_model.pb"))


class _DictInputsModel(keras.Model):
  """(inputs {"values": [B, T, 2]}, state) -> (outputs [B, T, 3], state): a dict-input stand-in."""

  def __init__(self):
    super().__init__(name="dict_inputs_model")
    self.lstm = LSTM(3)

  def call(self, inputs, state=None, training=False):
    return self.lstm(inputs["values"], initial_state=state, training=training)


class _DictInputsTask(Task):
  def __init__(self):
    self._model = _DictInputsModel()
    self._data = tf.random.stateless_normal([2, 7, 2], seed=[1, 2])
    self._model(self.train_batch(0, 0, 2)["inputs"], self.initial_state(2))

  model = property(lambda self: self._model)
  global_batch_size = property(lambda self: 2)

  def initial_state(self, batch_size):
    return self._model.lstm.get_initial_state(batch_size)

  def train_batch(self, step, row_start, num_rows):
    values = self._data[:num_rows]
    return {"inputs": {"values": values}, "targets": values, "weights": tf.ones([num_rows, 7]),
            "reset": tf.ones([num_rows], tf.bool)}

  def loss(self, batch, predictions):
    return tf.reduce_mean(tf.square(predictions[..., :2] - batch["targets"]), -1)

  def num_eval_batches(self, split):
    return 0

  def eval_batch(self, split, index, row_start, num_rows):
    raise AssertionError("no eval splits")


def test_dict_inputs_export_by_key(tmp_path):
  task = _DictInputsTask()
  loaded = tf.saved_model.load(export(task, str(tmp_path)))
  signature = loaded.signatures["serving_default"]
  assert sorted(signature.structured_input_signature[1]) == ["state_0", "state_1", "values"]
  values = tf.random.stateless_normal([3, 5, 2], seed=[3, 4])
  expected, expected_state = task.model({"values": values}, task.initial_state(3))
  result = signature(values=values, **loaded.signatures["initial_state"](batch_size=tf.constant(3)))
  np.testing.assert_allclose(result["outputs"], expected, rtol=1e-6, atol=1e-6)
  outputs, state = loaded.step({"values": values}, loaded.initial_state(3))
  np.testing.assert_allclose(outputs, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(state[1], expected_state.c, rtol=1e-6, atol=1e-6)
  outputs, _ = loaded.step({"values": values.numpy().astype(np.float64)}, loaded.initial_state(3))
  np.testing.assert_allclose(outputs, expected, rtol=1e-6, atol=1e-6)
