"""One training step, observed directly: exact clipping, skipped non-finite steps, reset rows."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbptt.layers import LSTMState
from toy_task import DelayTask
from tbptt.trainer import runtime
from tbptt.trainer.train_step import NonFiniteCounters, eval_step, forward_backward, train_step

ROWS = 4


def counters():
  return NonFiniteCounters(total=tf.Variable(0, dtype=tf.int64),
                           consecutive=tf.Variable(0, dtype=tf.int64))


def built(task_kwargs=None, learning_rate=1.0):
  runtime.seed_everything(3)
  task = DelayTask(batch_size=ROWS, units=8, **(task_kwargs or {}))
  batch = task.train_batch(tf.constant(1, tf.int64), 0, ROWS)
  task.model(batch["inputs"], task.initial_state(ROWS))
  optimizer = keras.optimizers.SGD(learning_rate)
  optimizer.build(task.model.trainable_variables)
  return task, optimizer


def random_state(seed=0):
  rng = np.random.default_rng(seed)
  return LSTMState(*(tf.constant(rng.normal(size=(ROWS, 8)), tf.float32) for _ in range(2)))


def values(variables):
  return [np.array(v) for v in variables]


def reference_gradients(task, batch, state):
  weight = tf.reduce_sum(batch["weights"])
  loss, _, grads, _ = forward_backward(task, batch, state, weight)
  return loss, [tf.convert_to_tensor(g) for g in grads]


@pytest.mark.parametrize("clip_norm", [None, 0.02])
def test_update_is_the_clipped_global_gradient(clip_norm):
  task, optimizer = built()
  variables = task.model.trainable_variables
  batch = task.train_batch(tf.constant(1, tf.int64), 0, ROWS)  # chunk 1: no reset
  state = random_state()
  loss, grads = reference_gradients(task, batch, state)
  norm = float(tf.linalg.global_norm(grads))
  expected = tf.clip_by_global_norm(grads, clip_norm)[0] if clip_norm else grads
  assert clip_norm is None or norm > 5 * clip_norm  # clipping is active, by a wide margin

  before = values(variables)
  _, metrics = train_step(task, optimizer, batch, state, counters=counters(), clip_norm=clip_norm)
  after = values(variables)
  assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
  assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
  for b, a, g in zip(before, after, expected):  # SGD with rate 1: w' = w - g
    np.testing.assert_allclose(b - a, np.array(g), rtol=1e-4, atol=1e-7)


def test_nonfinite_step_changes_nothing_and_is_counted():
  task, optimizer = built({"nan_steps": (1,)}, learning_rate=0.5)
  optimizer = keras.optimizers.Adam(0.1)
  optimizer.build(task.model.trainable_variables)
  steps = counters()
  state = random_state()
  bad = task.train_batch(tf.constant(1, tf.int64), 0, ROWS)
  watched = task.model.variables + optimizer.variables
  before = values(watched)
  new_state, metrics = train_step(task, optimizer, bad, state, counters=steps, clip_norm=1.0)
  assert not bool(metrics["finite"]) and np.isnan(float(metrics["loss"]))
  for b, a in zip(before, values(watched)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(np.array(new_state.h), np.array(state.h))
  np.testing.assert_array_equal(np.array(new_state.c), np.array(state.c))
  assert (int(steps.total), int(steps.consecutive)) == (1, 1)
  train_step(task, optimizer, bad, state, counters=steps, clip_norm=1.0)
  assert (int(steps.total), int(steps.consecutive)) == (2, 2)

  good = task.train_batch(tf.constant(2, tf.int64), 0, ROWS)
  _, metrics = train_step(task, optimizer, good, state, counters=steps, clip_norm=1.0)
  assert bool(metrics["finite"])
  assert (int(steps.total), int(steps.consecutive)) == (2, 0)
  assert int(optimizer.iterations) == 1
  assert not np.array_equal(values(task.model.trainable_variables)[0], before[0])


def test_reset_rows_start_from_zero_state():
  task, optimizer = built(learning_rate=1e-3)
  batch = dict(task.train_batch(tf.constant(1, tf.int64), 0, ROWS))
  reset = np.array([True, False, True, False])
  batch["reset"] = tf.constant(reset)
  state = random_state()
  zero = task.initial_state(ROWS)
  _, from_given = task.model(batch["inputs"], state)
  _, from_zero = task.model(batch["inputs"], zero)

  eval_state, _ = eval_step(task, batch, state)
  # The returned state comes from the weights before the update.
  new_state, _ = train_step(task, optimizer, batch, state, counters=counters())
  for got in (new_state, eval_state):
    for g, z, s in zip(got, from_zero, from_given):
      np.testing.assert_allclose(np.array(g)[reset], np.array(z)[reset], rtol=1e-6)
      np.testing.assert_allclose(np.array(g)[~reset], np.array(s)[~reset], rtol=1e-6)


def test_eval_step_sums():
  task, _ = built()
  batch = task.eval_batch("valid", tf.constant(0, tf.int64), 0, ROWS)
  _, sums = eval_step(task, batch, task.initial_state(ROWS))
  predictions, _ = task.model(batch["inputs"], task.initial_state(ROWS))
  per_position = np.array(task.loss(batch, predictions))
  weights = np.array(batch["weights"])
  assert float(sums["weight"]) == weights.sum() == ROWS * (8 - 3)  # the first `delay` are padding
  assert float(sums["loss"]) == pytest.approx(float((per_position * weights).sum()), rel=1e-6)
  assert set(sums) == {"loss", "weight", "correct"}
