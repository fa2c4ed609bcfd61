"""Tests for experiments/language_model.py: the model's state handling and options, and the task."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.data.corpus import TextCorpus
from tbptt.experiments.language_model import LanguageModel, LanguageModelTask
from tbptt.layers import LSTMState

TEXT = "abcabdabcabd\nhello world\n" * 30


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("text")
  for split in ("train", "valid"):
    (root / f"{split}.txt").write_text(TEXT)
  return str(root / "train.txt"), str(root / "valid.txt")


def _ids(shape, vocab, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, vocab, shape), tf.int32)


def test_shapes_and_state_structure():
  model = LanguageModel(30, units=8, num_layers=3, embedding_dim=5)
  logits, state = model(_ids([2, 7], 30), None)
  assert logits.shape == (2, 7, 30) and logits.dtype == tf.float32
  assert isinstance(state, tuple) and len(state) == 3
  assert all(isinstance(s, LSTMState) and s.h.shape == (2, 8) for s in state)


def test_two_chunks_with_carried_state_equal_one_long_sequence():
  model = LanguageModel(20, units=6, num_layers=2)
  ids = _ids([3, 10], 20)
  full, full_state = model(ids, model.initial_state(3))
  first, state = model(ids[:, :4], model.initial_state(3))
  second, state = model(ids[:, 4:], state)
  np.testing.assert_allclose(tf.concat([first, second], 1), full, rtol=1e-5, atol=1e-5)
  for a, b in zip(tf.nest.flatten(state), tf.nest.flatten(full_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tied_weights_share_the_embedding():
  model = LanguageModel(15, units=4, num_layers=1, tie_weights=True)
  ids = _ids([2, 3], 15)
  logits, _ = model(ids, None)
  names = sorted(w.path for w in model.trainable_weights)
  assert not any("softmax/kernel" in n for n in names)
  # Logits are the top layer's outputs times the embedding matrix, plus a bias.
  x = model.embedding(ids)
  outputs, _ = model.rnn(x, initial_state=model.initial_state(2))
  expected = tf.einsum("btd,vd->btv", outputs, model.embedding.embeddings) + model.softmax_bias
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="embedding_dim=7"):
    LanguageModel(15, units=4, tie_weights=True, embedding_dim=7)


def test_init_scale_bounds_every_weight_and_layers_differ():
  model = LanguageModel(25, units=8, num_layers=2, init_scale=0.05, embedding_dim=8)
  model(_ids([1, 1], 25), None)
  for w in model.weights:
    if "bias" not in w.path:
      assert np.abs(w.numpy()).max() <= 0.05 + 1e-7, w.path
  recurrent = [w.numpy() for w in model.weights if "recurrent_kernel" in w.path]
  assert len(recurrent) == 2 and not np.allclose(recurrent[0], recurrent[1])


def test_cell_options_reach_every_layer():
  model = LanguageModel(10, units=8, num_layers=2, num_proj=4, use_peepholes=True,
                        layer_norm=True, unit_forget_bias=False, cell_clip=3.0)
  _, state = model(_ids([2, 3], 10), None)
  assert [tuple(s.h.shape) for s in state] == [(2, 4), (2, 4)]
  assert all(s.c.shape == (2, 8) for s in state)
  for lstm in model.rnn.layers_:
    cell = lstm.cell
    assert cell.use_peepholes and cell.layer_norm and cell.cell_clip == 3.0
    assert not cell.unit_forget_bias
    assert cell.peephole_i.shape == (8,) and cell.projection.shape == (8, 4)


def test_dropout_only_in_training():
  model = LanguageModel(12, units=8, num_layers=2, dropout=0.5, seed=1)
  ids = _ids([2, 5], 12)
  a, _ = model(ids, None, training=False)
  b, _ = model(ids, None, training=False)
  c, _ = model(ids, None, training=True)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def _task(text_files, level="char", **model_kwargs):
  train, valid = text_files

  def corpus_fn(model_dir):
    return TextCorpus(model_dir, train_path=train, valid_path=valid, level=level, batch_size=4,
                      seq_len=6)

  def model_fn(vocab_size):
    return LanguageModel(vocab_size, units=8, num_layers=1, **model_kwargs)

  return LanguageModelTask(corpus_fn=corpus_fn, model_fn=model_fn)


def test_task_batches_loss_and_metrics(text_files):
  task = _task(text_files)
  assert task.model.built and task.global_batch_size == 4 and task.tokens_per_step == 24
  length = len(TEXT) // 4
  assert task.steps_per_epoch == (length - 1) // 6
  batch = task.train_batch(tf.constant(task.steps_per_epoch + 2, tf.int64), 1, 2)
  np.testing.assert_array_equal(batch["inputs"], task.corpus.train.chunk(2)["inputs"][1:3])
  logits, _ = task.model(batch["inputs"], task.initial_state(2))
  loss = task.loss(batch, logits)
  assert loss.shape == (2, 6)
  expected = -tf.gather(tf.nn.log_softmax(logits), batch["targets"], batch_dims=2)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  assert task.num_eval_batches("valid") == task.corpus.evals["valid"].num_chunks > 0
  assert task.num_eval_batches("test") == 0
  assert task.eval_metrics({"loss": 6.0, "weight": 3.0}) == pytest.approx(
      {"loss": 2.0, "bits_per_char": 2.0 / math.log(2)})


def test_word_level_reports_perplexity(text_files):
  task = _task(text_files, level="word")
  assert task.eval_metrics({"loss": 4.0, "weight": 2.0}) == pytest.approx(
      {"loss": 2.0, "perplexity": math.exp(2.0)})


def test_task_builds_mirrored_variables(text_files):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    task = _task(text_files)
  assert task.model.weights
  assert all(isinstance(v.value, tf.distribute.DistributedValues) for v in task.model.weights)


@pytest.mark.parametrize("rows", [1, 3])
def test_evaluation_counts_every_token_of_the_split(text_files, rows):
  from tbptt.trainer.loop import EvalLoop
  train, valid = text_files

  def corpus_fn(model_dir):
    return TextCorpus(model_dir, train_path=train, valid_path=valid, batch_size=4, seq_len=7,
                      eval_batch_size=rows)

  task = LanguageModelTask(corpus_fn=corpus_fn,
                           model_fn=lambda vocab_size: LanguageModel(vocab_size, units=8,
                                                                     num_layers=1))
  sums = EvalLoop(tf.distribute.get_strategy(), task, rows=rows)("valid")
  ids = task.vocab.encode_text(TEXT)
  assert sums["weight"] == len(ids) - 1 == len(TEXT) - 1
  if rows == 1:
    # One row is the whole text in one sequence: the chunked, state-carrying evaluation equals it.
    logits, _ = task.model(tf.constant(ids[None, :-1], tf.int32), None)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(ids[None, 1:], logits)
    assert sums["loss"] == pytest.approx(float(tf.reduce_sum(loss)), rel=1e-5)
