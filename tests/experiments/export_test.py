"""Tests for experiments/export.py: the streaming SavedModel reloads and matches the model step by
step."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from experiments.data.corpus import TextCorpus
from experiments.export import export
from experiments.language_model import LanguageModel, LanguageModelTask


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
