"""The AWD-LSTM regularisers of the language model: embedding dropout, locked dropout, AR, TAR."""

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.language_model import LanguageModel, LanguageModelTask
from tbptt.layers import LSTMState

V = 11


def _ids(shape, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, V, shape), tf.int32)


def _embedded_inputs(model, ids, training):
  """What the first LSTM layer reads: the model's embedded (and dropped) inputs [B, T, D]."""
  seen = {}
  original = model.rnn.call

  def spy(x, *args, **kwargs):
    seen["x"] = x
    return original(x, *args, **kwargs)
  model.rnn.call = spy
  try:
    model(ids, None, training=training)
  finally:
    model.rnn.call = original
  return seen["x"].numpy()


def test_embedding_dropout_drops_whole_words_with_one_mask_per_call():
  rate = 0.5
  model = LanguageModel(V, units=6, num_layers=1, embedding_dim=5, embedding_dropout=rate, seed=3)
  ids = _ids([4, 30])
  model(ids, None)
  table = model.embedding.embeddings.numpy()
  masks = []
  for _ in range(2):
    x = _embedded_inputs(model, ids, training=True)
    factor = x / table[ids.numpy()]  # Per position: 0 (dropped word) or 1 / (1 - rate), all dims.
    assert np.allclose(factor, factor[..., :1], atol=1e-5), "a whole row is dropped or kept"
    factor = factor[..., 0]
    assert np.all(np.isclose(factor, 0, atol=1e-6) | np.isclose(factor, 1 / (1 - rate)))
    word_kept = {}
    for word, f in zip(ids.numpy().ravel(), factor.ravel()):
      assert word_kept.setdefault(word, f) == pytest.approx(f), "every occurrence of a word shares"
    masks.append(word_kept)
    assert 0 < sum(f > 0 for f in word_kept.values()) < len(word_kept)
  assert masks[0] != masks[1], "each call draws a new mask"
  np.testing.assert_allclose(_embedded_inputs(model, ids, training=False), table[ids.numpy()])


def test_locked_dropout_uses_one_mask_per_row_for_every_step():
  model = LanguageModel(V, units=6, num_layers=2, embedding_dim=6, dropout_input=0.5,
                        dropout_between=0.0, dropout_output=0.0, locked_dropout=True, seed=4)
  ids = tf.fill([3, 9], 2)  # One word everywhere: the embedded inputs differ only by the mask.
  x = _embedded_inputs(model, ids, training=True)
  assert np.all(x == x[:, :1]), "the same mask at every step"
  assert not np.all(x == x[:1]) and np.any(x == 0)
  unlocked = LanguageModel(V, units=6, num_layers=2, embedding_dim=6, dropout=0.5, seed=4)
  y = _embedded_inputs(unlocked, ids, training=True)
  assert not np.all(y == y[:, :1]), "without locked dropout each step draws its own mask"


def test_rates_default_to_dropout_and_are_checked():
  model = LanguageModel(V, units=4, num_layers=2, dropout=0.3, dropout_output=0.1)
  assert model.input_dropout.rate == 0.3 and model.output_dropout.rate == 0.1
  assert model.rnn.dropout_between == 0.3
  with pytest.raises(ValueError, match="embedding_dropout must be a rate"):
    LanguageModel(V, embedding_dropout=1.0)
  with pytest.raises(ValueError, match="activation_regularization must be a number >= 0"):
    LanguageModel(V, activation_regularization=-1.0)


def test_ar_and_tar_match_numpy_and_enter_the_loss():
  alpha, beta = 2.0, 1.5
  model = LanguageModel(V, units=5, num_layers=2, embedding_dim=4, dropout_output=0.4,
                        locked_dropout=True, activation_regularization=alpha,
                        temporal_activation_regularization=beta, seed=5)
  ids = _ids([3, 6], seed=1)
  state = tuple(LSTMState(tf.random.normal([3, 5], seed=i), tf.random.normal([3, 5], seed=i + 9))
                for i in range(2))
  seen = {}
  original = model.output_dropout.call

  def spy(x, *args, **kwargs):
    seen["top"] = x
    seen["dropped"] = original(x, *args, **kwargs)
    return seen["dropped"]
  model.output_dropout.call = spy
  predictions, _ = model(ids, state, training=True)
  model.output_dropout.call = original
  top, dropped = seen["top"].numpy(), seen["dropped"].numpy()
  assert not np.allclose(top, dropped), "AR reads the dropped outputs, TAR the undropped ones"
  previous = np.concatenate([state[-1].h.numpy()[:, None], top[:, :-1]], axis=1)
  np.testing.assert_allclose(predictions["ar"], alpha * np.mean(dropped ** 2, axis=-1), rtol=1e-5)
  np.testing.assert_allclose(predictions["tar"], beta * np.mean((top - previous) ** 2, axis=-1),
                             rtol=1e-5)
  logits, _ = model(ids, state, training=False)
  assert isinstance(logits, tf.Tensor), "inference returns the logits alone"


def test_the_task_adds_ar_and_tar_to_the_loss_and_reports_them(tmp_path):
  text = tmp_path / "t.txt"
  text.write_text("abcabdabcabd\nhello world\n" * 30)
  from tbptt.experiments.data.corpus import TextCorpus

  def corpus_fn(model_dir):
    return TextCorpus(model_dir, train_path=str(text), valid_path=str(text), batch_size=4,
                      seq_len=6)

  def model_fn(vocab_size):
    return LanguageModel(vocab_size, units=8, num_layers=1, activation_regularization=2.0,
                         temporal_activation_regularization=1.0)

  task = LanguageModelTask(corpus_fn=corpus_fn, model_fn=model_fn)
  assert task.train_metric_names == ("ar", "tar")
  batch = task.train_batch(tf.constant(0, tf.int64), 0, 4)
  predictions, _ = task.model(batch["inputs"], None, training=True)
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=batch["targets"], logits=predictions["logits"])
  np.testing.assert_allclose(task.loss(batch, predictions),
                             cross_entropy + predictions["ar"] + predictions["tar"], rtol=1e-6)
  assert set(task.train_metrics(batch, predictions)) == {"ar", "tar"}
