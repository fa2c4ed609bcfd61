"""A test hook: a task wrapper whose listed steps have a non-finite loss the first time they run.

  task = InjectNonFinite(task=DelayTask(), steps=[5, 6, 7])
  # or from gin (see launch_with_hooks.py):
  #   run_experiment.task_fn = @InjectNonFinite
  #   InjectNonFinite.task_fn = @LanguageModelTask
  #   InjectNonFinite.steps = [5, 6, 7]

A listed step is poisoned (NaN weights) only the first time this process takes it (a transient
fault), so a rollback that replays it trains through. Only the compiled training loop takes steps:
the eager call that builds the model does not count. Keep histograms off (their gradient pass reads
the next step's batch too).
"""

import gin
import numpy as np
import tensorflow as tf

from tbptt.trainer.task import Task


@gin.configurable
class InjectNonFinite(Task):
  """Wraps `task` (or `task_fn(model_dir=...)`); poisons the first take of each step in `steps`."""

  def __init__(self, task=None, *, steps=(), task_fn=None, model_dir=None):
    self._task = task if task is not None else task_fn(model_dir=model_dir)
    self._steps = tf.constant(sorted(set(steps)) or [-1], tf.int64)
    self._first_untaken = tf.Variable(0, dtype=tf.int64, trainable=False,
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def __getattr__(self, name):  # Everything else (write_assets, vocab, ...) is the task's.
    return getattr(self.__dict__["_task"], name)

  def train_batch(self, step, row_start, num_rows):
    batch = dict(self._task.train_batch(step, row_start, num_rows))
    if not tf.inside_function():
      return batch
    step = tf.cast(step, tf.int64)
    poison = tf.logical_and(tf.reduce_any(tf.equal(step, self._steps)),
                            step >= self._first_untaken.read_value())
    weights = batch["weights"]
    batch["weights"] = weights * tf.where(poison, tf.constant(np.nan, weights.dtype),
                                          tf.constant(1, weights.dtype))
    with tf.control_dependencies([batch["weights"]]):
      self._first_untaken.assign(tf.maximum(self._first_untaken, step + 1))
    return batch

  @property
  def inputs(self):
    return self

  @property
  def model(self):
    return self._task.model

  @property
  def global_batch_size(self):
    return self._task.global_batch_size

  @property
  def eval_batch_size(self):
    return self._task.eval_batch_size

  @property
  def steps_per_epoch(self):
    return self._task.steps_per_epoch

  @property
  def tokens_per_step(self):
    return self._task.tokens_per_step

  def initial_state(self, batch_size):
    return self._task.initial_state(batch_size)

  def loss(self, batch, predictions):
    return self._task.loss(batch, predictions)

  def num_eval_batches(self, split):
    return self._task.num_eval_batches(split)

  def eval_batch(self, split, index, row_start, num_rows):
    return self._task.eval_batch(split, index, row_start, num_rows)

  def eval_sums(self, batch, predictions):
    return self._task.eval_sums(batch, predictions)

  def eval_metrics(self, sums):
    return self._task.eval_metrics(sums)

  def write_eval_summaries(self, step):
    return self._task.write_eval_summaries(step)
