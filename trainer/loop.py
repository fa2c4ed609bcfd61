"""Compiled multi-step loops: N training steps (or a whole eval pass) in one `tf.function` call.

The step count is a tensor, so calls with different N reuse one trace. The loop runs in
cross-replica context and calls `strategy.run` once per step (the way Orbit and Keras compile their
loops); the carried state flows through the loop as a per-replica value and is returned, so it
survives between calls.
"""

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tbptt.trainer import distribute
from tbptt.layers.state import reset_rows
from tbptt.trainer.train_step import (SUM, NonFiniteCounters, eval_step, forward_backward,
                                      train_step)


class TrainOutputs(NamedTuple):
  """What one call of `TrainLoop` reports, as NumPy values (one entry per step taken)."""

  steps: int                   # steps taken (fewer than asked if max_nonfinite_steps ran out)
  loss: np.ndarray             # [steps] global-batch mean loss of each step
  grad_norm: np.ndarray        # [steps] global gradient norm before clipping
  learning_rate: np.ndarray    # [steps] rate the step was taken with
  weight: np.ndarray           # [steps] global weight sum (target positions)
  nonfinite_steps: np.ndarray  # [steps] running total of skipped steps after each step
  consecutive_nonfinite: int  # skipped steps in a row at the end of the loop
  state_rms: dict[str, float]  # RMS of each carried state tensor after the last step
  stopped: bool = False        # the loop ended early because some process asked to stop
  task: dict | None = None     # {name: [steps]} the task's `train_metrics`, global means


def state_paths(structure) -> list[str]:
  """Leaf names of a state nest: 'h', 'c' for an LSTMState; '0/h', '1/c' for a tuple of them."""
  def walk(node, prefix):
    if isinstance(node, dict):
      items = sorted(node.items())
    elif hasattr(node, "_fields"):
      items = list(zip(node._fields, node))
    elif isinstance(node, (list, tuple)):
      items = list(enumerate(node))
    else:
      return [prefix or "state"]
    return [path for key, child in items
            for path in walk(child, f"{prefix}/{key}" if prefix else str(key))]
  return walk(structure, "")


class TrainLoop:
  """`loop(num_steps, state) -> (new_state, TrainOutputs)`: `num_steps` training steps in graph.

  Args:
    strategy: The strategy the task and optimizer were built under.
    task: The `tbptt.trainer.task.Task`.
    optimizer: A built Keras optimizer.
    global_step: int64 scalar variable; step k reads `task.train_batch(k, ...)`, then the variable
      is k + 1.
    counters: NonFiniteCounters.
    rows: Rows per replica (global batch / replicas).
    clip_norm: Global-norm clip (None: off).
    max_nonfinite_steps: Stop the loop early once this many steps in a row were skipped.
    jit_compile: Compile each replica's forward and backward pass with XLA.
    stop_request: Optional float32 scalar variable, set > 0 (from any thread) to ask for a stop:
      read in every step after the backward pass and all-reduced with the gradients, so every
      replica of every worker ends the loop after the same step.
    learning_rate_scale: Optional float32 scalar variable the optimizer's rate is multiplied by;
      set before every step to the input source's `learning_rate_scale(step)` when it has one.
  """

  def __init__(self, strategy, task, optimizer, *, global_step: tf.Variable,
               counters: NonFiniteCounters, rows: int, clip_norm: float | None,
               max_nonfinite_steps: int, jit_compile: bool = False,
               stop_request: tf.Variable | None = None,
               learning_rate_scale: tf.Variable | None = None):
    self._strategy = strategy
    self._task = task
    self._optimizer = optimizer
    self._global_step = global_step
    self._counters = counters
    self._rows = rows
    self._clip_norm = clip_norm
    self._max_nonfinite = max_nonfinite_steps
    self._stop_request = stop_request
    self._learning_rate_scale = learning_rate_scale
    self._forward_backward = (tf.function(forward_backward, jit_compile=True) if jit_compile
                              else forward_backward)
    self._paths = None
    self._loop = tf.function(self._run)

  def _replica_step(self, step, state):
    ctx = tf.distribute.get_replica_context()
    row_start = ctx.replica_id_in_sync_group * self._rows
    batch = self._task.inputs.train_batch(step, row_start, self._rows)
    return train_step(self._task, self._optimizer, batch, state, counters=self._counters,
                      clip_norm=self._clip_norm, forward_backward_fn=self._forward_backward,
                      stop_request=self._stop_request)

  def _run(self, num_steps, state):
    strategy = self._strategy
    arrays = {k: tf.TensorArray(dtype, size=num_steps, element_shape=[]) for k, dtype in (
        ("loss", tf.float32), ("grad_norm", tf.float32), ("learning_rate", tf.float32),
        ("weight", tf.float32), ("nonfinite_steps", tf.int64))}
    names = tuple(self._task.train_metric_names)
    task_arrays = {k: tf.TensorArray(tf.float32, size=num_steps, element_shape=[]) for k in names}
    taken = tf.constant(0)
    stopped = tf.constant(False)
    state = distribute.local_values(strategy, state)
    for i in tf.range(num_steps):
      step = self._global_step.read_value()
      scale = self._task.inputs.learning_rate_scale(step)
      if scale is not None and self._learning_rate_scale is not None:
        self._learning_rate_scale.assign(tf.cast(scale, tf.float32))
      learning_rate = tf.cast(self._optimizer.learning_rate, tf.float32)
      state, metrics = strategy.run(self._replica_step, args=(step, state))
      metrics = distribute.first_replica(strategy, metrics)
      if set(metrics["task"]) != set(names):
        raise ValueError(f"Task.train_metrics returned {sorted(metrics['task'])}, but "
                         f"Task.train_metric_names is {list(names)}")
      task_arrays = {k: a.write(i, metrics["task"][k]) for k, a in task_arrays.items()}
      self._global_step.assign_add(1)
      arrays["loss"] = arrays["loss"].write(i, metrics["loss"])
      arrays["grad_norm"] = arrays["grad_norm"].write(i, metrics["grad_norm"])
      arrays["learning_rate"] = arrays["learning_rate"].write(i, learning_rate)
      arrays["weight"] = arrays["weight"].write(i, metrics["weight"])
      total = self._counters.total.read_value()
      arrays["nonfinite_steps"] = arrays["nonfinite_steps"].write(i, total)
      taken = i + 1
      if self._stop_request is not None:
        stopped = metrics["stop"]
      if self._counters.consecutive >= self._max_nonfinite or stopped:
        break
    outputs = {k: a.gather(tf.range(taken)) for k, a in arrays.items()}
    outputs["task"] = {k: a.gather(tf.range(taken)) for k, a in task_arrays.items()}
    outputs["consecutive_nonfinite"] = self._counters.consecutive.read_value()
    outputs["stopped"] = stopped
    return state, outputs, self._state_sums(state)

  def _state_sums(self, state):
    """Per state tensor: (sum of squares, element count) over every replica's rows."""
    def local(s):
      return [tf.stack([tf.reduce_sum(tf.square(t)), tf.cast(tf.size(t), tf.float32)])
              for t in tf.nest.flatten(s)]
    per_replica = self._strategy.run(local, args=(state,))
    return distribute.sum_over_replicas(self._strategy, per_replica)

  def __call__(self, num_steps: int, state) -> tuple[Any, TrainOutputs]:
    if self._paths is None:
      self._paths = state_paths(distribute.first_replica(self._strategy, state))
    state, outputs, sums = self._loop(tf.constant(num_steps, tf.int32), state)
    task_metrics = {k: v.numpy() for k, v in outputs.pop("task").items()}
    outputs = {k: v.numpy() for k, v in outputs.items()}
    outputs["task"] = task_metrics
    outputs["consecutive_nonfinite"] = int(outputs["consecutive_nonfinite"])
    outputs["stopped"] = bool(outputs["stopped"])
    sums = [x.numpy() for x in sums]
    state_rms = {p: float(np.sqrt(s[0] / max(s[1], 1.0))) for p, s in zip(self._paths, sums)}
    return state, TrainOutputs(steps=len(outputs["loss"]), state_rms=state_rms, **outputs)

  @property
  def tracing_count(self) -> int:
    """How many times the loop was traced (stays 1: step counts are tensors)."""
    return self._loop.experimental_get_tracing_count()


class EvalLoop:
  """`loop(split) -> sums`: one pass over a split from a zero state, carried across its chunks.

  Args:
    strategy: The strategy the task was built under.
    task: The `tbptt.trainer.task.Task`.
    rows: Eval rows per replica.
    max_batches: Cap on chunks per eval (None: all).
  """

  def __init__(self, strategy, task, *, rows: int, max_batches: int | None = None):
    self._strategy = strategy
    self._task = task
    self._rows = rows
    self._max_batches = max_batches
    self._loops = {}

  def _make_loop(self, split):
    strategy, task, rows = self._strategy, self._task, self._rows

    def replica_step(index, state):
      ctx = tf.distribute.get_replica_context()
      batch = task.inputs.eval_batch(split, index, ctx.replica_id_in_sync_group * rows, rows)
      return eval_step(task, batch, state)

    def accumulate(index, state, totals):
      state, sums = replica_step(index, state)
      return state, {k: totals[k] + v for k, v in sums.items()}

    def run(num_batches):
      state = strategy.experimental_distribute_values_from_function(
          lambda _: task.initial_state(rows))
      state = distribute.local_values(strategy, state)
      # Chunk 0 outside the loop: it fixes the structure of the sums (the task may add its own).
      state, totals = strategy.run(replica_step, args=(tf.constant(0, tf.int64), state))
      for index in tf.range(1, num_batches):
        state, totals = strategy.run(accumulate, args=(tf.cast(index, tf.int64), state, totals))
      return distribute.sum_over_replicas(strategy, totals)

    return tf.function(run)

  def num_batches(self, split: str) -> int:
    count = int(self._task.inputs.num_eval_batches(split))
    return count if self._max_batches is None else min(count, self._max_batches)

  def __call__(self, split: str) -> dict[str, float] | None:
    """Sums over the split (`loss`, `weight`, the task's extras) as floats; None if it is empty."""
    if self.num_batches(split) == 0:
      return None
    if split not in self._loops:
      self._loops[split] = self._make_loop(split)
    sums = self._loops[split](tf.constant(self.num_batches(split), tf.int32))
    return {k: float(v.numpy()) for k, v in sums.items()}


class GradientPass:
  """`gradients(step, state) -> [grad]`: the summed gradient of chunk `step` at the current weights.

  For inspection (histograms): no update, no counter moves. The pass draws dropout masks, so the
  model's non-trainable variables (seed-generator states) are put back afterwards: inspecting
  never changes what training does next.

  Args:
    strategy: The strategy the task was built under.
    task: The `tbptt.trainer.task.Task`.
    rows: Rows per replica.
  """

  def __init__(self, strategy, task, *, rows: int):
    self._strategy = strategy
    self._task = task
    self._rows = rows
    self._fn = tf.function(self._run)

  def _run(self, step, state):
    task, rows = self._task, self._rows

    def replica(step, state):
      ctx = tf.distribute.get_replica_context()
      batch = task.inputs.train_batch(step, ctx.replica_id_in_sync_group * rows, rows)
      weight = ctx.all_reduce(SUM, tf.reduce_sum(tf.cast(batch["weights"], tf.float32)))
      grads = forward_backward(task, batch, reset_rows(state, batch["reset"]), weight)[2]
      return ctx.all_reduce(SUM, [tf.convert_to_tensor(g) for g in grads])
    return distribute.first_replica(self._strategy,
                                    self._strategy.run(replica, args=(step, state)))

  def __call__(self, step: tf.Tensor, state) -> list[tf.Tensor]:
    kept = [(v, tf.identity(v)) for v in self._task.model.non_trainable_variables]
    grads = self._fn(step, state)
    for variable, value in kept:
      variable.assign(value)
    return grads
