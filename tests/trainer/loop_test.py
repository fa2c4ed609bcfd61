"""The compiled loops: exact step counts, one trace, state carried across calls, eval passes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from toy_task import DelayTask
from tbptt.trainer import runtime
from tbptt.trainer import distribute
from nonfinite_injection import InjectNonFinite
from tbptt.trainer.loop import EvalLoop, GradientPass, TrainLoop, state_paths
from tbptt.trainer.train_step import NonFiniteCounters

ROWS = 4


def make_loop(loop_kwargs=None, **task_kwargs):
  runtime.seed_everything(5)
  task = DelayTask(batch_size=ROWS, units=8, **task_kwargs)
  batch = task.train_batch(tf.constant(0, tf.int64), 0, ROWS)
  task.model(batch["inputs"], task.initial_state(ROWS))
  optimizer = keras.optimizers.Adam(0.01)
  optimizer.build(task.model.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64)
  counters = NonFiniteCounters(tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64))
  loop = TrainLoop(tf.distribute.get_strategy(), task, optimizer, global_step=step,
                   counters=counters, rows=ROWS, clip_norm=1.0, max_nonfinite_steps=3,
                   **(loop_kwargs or {}))
  return task, loop, step, counters


def test_steps_advance_exactly_and_the_loop_traces_once():
  task, loop, step, _ = make_loop()
  state = task.initial_state(ROWS)
  for n in (3, 5, 1):
    state, outputs = loop(n, state)
    assert outputs.steps == n and outputs.loss.shape == (n,)
  assert int(step.numpy()) == 9
  assert loop.tracing_count == 1
  assert outputs.learning_rate == pytest.approx([0.01])
  assert set(outputs.state_rms) == {"h", "c"} and outputs.state_rms["c"] > 0


def test_state_carries_across_calls_bitwise():
  task, loop, _, _ = make_loop()
  state, whole = loop(6, task.initial_state(ROWS))
  other_task, other_loop, _, _ = make_loop()
  split_state, first = other_loop(2, other_task.initial_state(ROWS))
  split_state, second = other_loop(4, split_state)
  np.testing.assert_array_equal(np.concatenate([first.loss, second.loss]), whole.loss)
  for a, b in zip(state, split_state):
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_loop_stops_once_nonfinite_steps_in_a_row_run_out():
  task, loop, step, counters = make_loop(nan_steps=range(2, 100))
  _, outputs = loop(10, task.initial_state(ROWS))
  assert outputs.steps == 5 and int(step.numpy()) == 5  # steps 2, 3, 4 skipped: the limit is 3
  assert outputs.consecutive_nonfinite == 3
  np.testing.assert_array_equal(outputs.nonfinite_steps, [0, 0, 1, 2, 3])
  assert int(counters.total.numpy()) == 3


def test_eval_loop_passes_over_the_split_from_zero_state():
  task, _, _, _ = make_loop(eval_len=64)
  full = EvalLoop(tf.distribute.get_strategy(), task, rows=ROWS)
  capped = EvalLoop(tf.distribute.get_strategy(), task, rows=ROWS, max_batches=3)
  first = full("valid")
  assert first == full("valid")  # each pass starts from a zero state
  assert first["weight"] == ROWS * (64 - 3)  # 8 chunks of 8; a row's first 3 targets are padding
  assert capped("valid")["weight"] == ROWS * (3 * 8 - 3)
  assert first["loss"] > 0 and 0 <= first["correct"] <= first["weight"]
  assert full("train_only_split") is None


def test_state_paths_name_nested_states():
  from tbptt.layers import LSTMState
  state = (LSTMState(1, 2), LSTMState(3, 4))
  assert state_paths(state) == ["0/h", "0/c", "1/h", "1/c"]
  assert state_paths({"b": 1, "a": [2, 3]}) == ["a/0", "a/1", "b"]
  assert state_paths(tf.zeros([2])) == ["state"]


def test_a_stop_request_ends_the_loop_after_one_step_and_can_be_withdrawn():
  stop = tf.Variable(0.0)
  task, loop, step, _ = make_loop({"stop_request": stop})
  state, outputs = loop(4, task.initial_state(ROWS))
  assert outputs.steps == 4 and not outputs.stopped
  stop.assign(1.0)
  state, outputs = loop(10, state)
  assert outputs.steps == 1 and outputs.stopped and int(step.numpy()) == 5
  stop.assign(0.0)
  _, outputs = loop(3, state)
  assert outputs.steps == 3 and not outputs.stopped and loop.tracing_count == 1


def test_a_stop_request_of_one_replica_stops_every_replica():
  strategy = distribute.make_strategy("mirrored", cpu_devices=2)
  with strategy.scope():
    task = DelayTask(batch_size=ROWS, units=8)
    task.model(task.train_batch(tf.constant(0, tf.int64), 0, ROWS // 2)["inputs"],
               task.initial_state(ROWS // 2))
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(task.model.trainable_variables)
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    step = tf.Variable(0, dtype=tf.int64, aggregation=first)
    counters = NonFiniteCounters(*(tf.Variable(0, dtype=tf.int64, aggregation=first)
                                   for _ in range(2)))
    # A different value on each replica: only the second one asks to stop.
    stop = tf.Variable(0.0, synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.SUM)
  strategy.extended.update(stop, lambda v: v.assign(0.0))
  stop.values[1].assign(1.0)
  loop = TrainLoop(strategy, task, optimizer, global_step=step, counters=counters,
                   rows=ROWS // 2, clip_norm=1.0, max_nonfinite_steps=3, stop_request=stop)
  state = strategy.experimental_distribute_values_from_function(
      lambda _: task.initial_state(ROWS // 2))
  _, outputs = loop(5, state)
  assert outputs.steps == 1 and outputs.stopped


def test_injected_steps_are_poisoned_the_first_time_only():
  runtime.seed_everything(5)
  task = InjectNonFinite(DelayTask(batch_size=ROWS, units=8), steps=[1, 2])
  task.model(task.train_batch(tf.constant(0, tf.int64), 0, ROWS)["inputs"],
             task.initial_state(ROWS))
  optimizer = keras.optimizers.Adam(0.01)
  optimizer.build(task.model.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64)
  counters = NonFiniteCounters(tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64))
  loop = TrainLoop(tf.distribute.get_strategy(), task, optimizer, global_step=step,
                   counters=counters, rows=ROWS, clip_norm=1.0, max_nonfinite_steps=3)
  state, outputs = loop(4, task.initial_state(ROWS))
  np.testing.assert_array_equal(np.isfinite(outputs.loss), [True, False, False, True])
  step.assign(0)  # Replayed (as after a rollback): nothing is poisoned.
  _, outputs = loop(4, state)
  assert np.all(np.isfinite(outputs.loss)) and int(counters.total.numpy()) == 2


def test_gradient_pass_changes_no_variable_and_leaves_the_random_streams_alone():
  task, loop, step, _ = make_loop(dropout=0.3)
  gradients = GradientPass(tf.distribute.get_strategy(), task, rows=ROWS)
  state = task.initial_state(ROWS)
  before = [np.array(v) for v in task.model.weights]
  grads = gradients(step.read_value(), state)
  assert len(grads) == len(task.model.trainable_variables)
  assert all(np.any(np.array(g) != 0) for g in grads[:1])
  for got, want in zip(task.model.weights, before):
    np.testing.assert_array_equal(np.array(got), want)
  # The next training step draws the same dropout masks as without the pass.
  _, with_pass = loop(1, state)
  other_task, other_loop, _, _ = make_loop(dropout=0.3)
  _, without = other_loop(1, other_task.initial_state(ROWS))
  np.testing.assert_array_equal(with_pass.loss, without.loss)
