"""run_model: masks, the carry point and burn-in context, for any (inputs, state) model."""

import numpy as np
import pytest
import tensorflow as tf

from tbptt.experiments.language_model import LanguageModel
from tbptt.trainer.chunk_model import run_model
from tbptt.trainer.train_step import weighted_loss_sum

V, B = 13, 2


def _model():
  return LanguageModel(V, units=6, num_layers=2, embedding_dim=5, seed=2)


def _inputs(width, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, V - 1, [B, width]), tf.int32)


def test_a_plain_chunk_is_one_call():
  model = _model()
  inputs = _inputs(9)
  expected, expected_state = model(inputs, None)
  logits, state = run_model(model, {"inputs": inputs}, model.initial_state(B), training=False)
  np.testing.assert_allclose(logits, expected, rtol=1e-6)
  np.testing.assert_allclose(state[-1].h, expected_state[-1].h, rtol=1e-6)


@pytest.mark.parametrize("carry", [1, 4, 7])
def test_burn_in_carries_the_state_after_carry_steps_and_predicts_every_step(carry):
  model = _model()
  burn_in, head = 3, 8
  inputs = _inputs(burn_in + head, seed=carry)
  batch = {"inputs": inputs, "mask": tf.ones([B, burn_in + head], tf.bool),
           "carry_steps": tf.constant(carry), "burn_in": burn_in}
  logits, state = run_model(model, batch, model.initial_state(B), training=False)
  whole, _ = model(inputs[:, :carry + burn_in], None)
  np.testing.assert_allclose(logits[:, :carry + burn_in], whole, rtol=1e-5, atol=1e-6)
  _, expected_state = model(inputs[:, :carry], None)
  for got, expected in zip(state, expected_state):
    np.testing.assert_allclose(got.h, expected.h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.c, expected.c, rtol=1e-5, atol=1e-6)


def test_burn_in_positions_carry_no_loss_but_receive_gradient():
  """Burn-in tokens (a word used nowhere else) have weight 0, yet the loss of later positions
  reaches their embedding row through the recurrence."""
  model = _model()
  burn_in, length = 4, 6
  inputs = _inputs(burn_in + length).numpy()
  inputs[:, :burn_in] = V - 1
  targets = _inputs(burn_in + length, seed=5)
  weights = np.zeros([B, burn_in + length], np.float32)
  weights[:, burn_in:] = 1.0
  batch = {"inputs": tf.constant(inputs), "targets": targets, "weights": tf.constant(weights),
           "mask": tf.ones([B, burn_in + length], tf.bool), "carry_steps": tf.constant(length),
           "burn_in": burn_in}
  model(batch["inputs"], None)

  def gradient_of_burn_in_word(weights):
    with tf.GradientTape() as tape:
      logits, _ = run_model(model, batch, model.initial_state(B), training=True)
      per_position = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
      loss = weighted_loss_sum(per_position, weights)
    grad = tape.gradient(loss, model.embedding.embeddings)
    return tf.convert_to_tensor(grad).numpy()[V - 1]

  assert np.abs(gradient_of_burn_in_word(batch["weights"])).max() > 1e-6
  only_burn_in = tf.constant(1.0 - weights)
  # Weight on the burn-in positions themselves would add their own loss: they carry none now.
  assert not np.allclose(gradient_of_burn_in_word(only_burn_in + batch["weights"]),
                         gradient_of_burn_in_word(batch["weights"]))
