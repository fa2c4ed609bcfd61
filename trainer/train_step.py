"""Pure step functions: one TBPTT training step and one eval step, in replica context.

Nothing here is compiled: the loops in `loop.py` trace these functions into their `tf.function`s.

How one training step treats the gradient across replicas (R of them):
  1. each replica's loss is sum(loss * weights) over its own rows divided by the GLOBAL weight sum
     (the local weight sums are all-reduced first), so the replica gradients add up to the gradient
     of the global-batch mean, whatever R is;
  2. the gradients are all-reduced (SUM) once, here; the global norm of that sum is the reported
     `grad_norm` and `tf.clip_by_global_norm` clips the sum;
  3. Keras 3 optimizers sum the gradients they are given across replicas again (in replica context),
     so each replica hands the optimizer 1/R of the reduced, clipped gradient: the optimizer's sum
     is then exactly that gradient (R copies of g/R; exact for R a power of two).
A non-finite loss or gradient skips the update entirely (cross-replica `tf.cond`: no variable,
optimizer slot or update counter changes), and the carried state keeps the value it started from.
"""

from typing import NamedTuple

import keras
import tensorflow as tf

from tbptt.layers.state import reset_rows
from tbptt.trainer.chunk_model import run_model

SUM = tf.distribute.ReduceOp.SUM


class NonFiniteCounters(NamedTuple):
  """Checkpointed int64 scalar variables counting skipped (non-finite) steps."""

  total: tf.Variable
  consecutive: tf.Variable


def scale_gradient(grad, factor):
  """grad * factor for dense gradients and `tf.IndexedSlices` (embedding gradients) alike."""
  if isinstance(grad, tf.IndexedSlices):
    values = grad.values * tf.cast(factor, grad.values.dtype)
    return tf.IndexedSlices(values, grad.indices, grad.dense_shape)
  return grad * tf.cast(factor, grad.dtype)


def merge_duplicate_rows(grad):
  """Sums the rows of a `tf.IndexedSlices` gradient that share an index (dense ones pass through).

  An embedding gradient lists one row per looked-up token, and the cross-replica sum concatenates
  replicas' rows; the norm of such values is not the norm of the gradient they add up to.
  """
  if not isinstance(grad, tf.IndexedSlices):
    return grad
  indices, position = tf.unique(grad.indices)
  values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(indices)[0])
  return tf.IndexedSlices(values, indices, grad.dense_shape)


def weighted_loss_sum(per_position, weights):
  """sum(loss * weights) in float32, ignoring the loss at weight-0 (padding) positions."""
  per_position = tf.cast(per_position, tf.float32)
  weights = tf.cast(weights, tf.float32)
  return tf.reduce_sum(tf.where(weights != 0, per_position * weights, tf.zeros_like(per_position)))


def forward_backward(task, batch, state, global_weight, loss_scale=None):
  """This replica's share of the loss and its gradients for one chunk.

  Args:
    task: The `tbptt.trainer.task.Task`.
    batch: The replica's chunk (inputs, targets, weights [b, T], reset [b], ...).
    state: Carried state, flagged rows already reset.
    global_weight: Sum of the weights over the global batch (all replicas), float32 scalar.
    loss_scale: Optional float32 scalar: differentiate loss * loss_scale (float16 loss scaling).

  Returns:
    (local_loss scalar float32, new_state, gradients list aligned with model.trainable_variables
    (of the scaled loss when loss_scale is given), local_metrics: the task's `train_metrics`, each
    this replica's share of its global weighted mean, as the loss).
  """
  model = task.model
  with tf.GradientTape() as tape:
    predictions, new_state = run_model(model, batch, state, training=True)
    loss_sum = weighted_loss_sum(task.loss(batch, predictions), batch["weights"])
    local_loss = tf.math.divide_no_nan(loss_sum, global_weight)
    scaled = local_loss * loss_scale if loss_scale is not None else local_loss
  variables = model.trainable_variables
  grads = tape.gradient(scaled, variables)
  # A variable the loss does not reach gets a zero gradient, so every replica reduces the same list.
  grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
  local_metrics = {
      name: tf.math.divide_no_nan(weighted_loss_sum(value, batch["weights"]), global_weight)
      for name, value in sorted(task.train_metrics(batch, predictions).items())}
  return local_loss, new_state, grads, local_metrics


def _is_finite(tensor):
  return tf.reduce_all(tf.math.is_finite(tensor))


def _loss_scale_optimizer(optimizer):
  return optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None


def train_step(task, optimizer, batch, state, *, counters: NonFiniteCounters,
               clip_norm: float | None = None, forward_backward_fn=forward_backward,
               stop_request=None):
  """One TBPTT training step, called in replica context (inside `strategy.run` or with no strategy).

  reset rows -> tape over the chunk -> global-mean loss -> all-reduced gradients -> global-norm clip
  -> update unless non-finite -> `tf.stop_gradient(new_state)`.

  Args:
    task: The `tbptt.trainer.task.Task` (its model, loss).
    optimizer: A built Keras optimizer over `task.model.trainable_variables` (a LossScaleOptimizer
      for float16; its scale is then stepped here, and its inner optimizer applies the update).
    batch: This replica's chunk: inputs [b, T, ...], targets, weights [b, T], reset [b] bool.
    state: Carried state, a nest of float32 [b, ...] tensors.
    counters: NonFiniteCounters, updated when a step is skipped (consecutive resets on a good step).
    clip_norm: Clip the global gradient to this global norm; None: no clipping.
    forward_backward_fn: `forward_backward` or a compiled (e.g. XLA) version of it.
    stop_request: Optional float32 scalar (or variable, read after the forward and backward pass),
      > 0 where this replica's process was asked to stop. It rides on the gradient all-reduce (no
      extra collective), so every replica of every worker learns after the same step that some
      process wants to stop (metrics `stop`).

  Returns:
    (new_state, metrics): new_state has `state`'s structure and no gradient (the input state, reset
    rows zeroed, if the step was skipped); metrics are scalars identical on every replica: `loss`
    (global-batch mean), `grad_norm` (global norm before clipping), `finite` (bool: the update was
    applied), `weight` (global weight sum), and with `stop_request`, `stop` (bool: some replica
    asked to stop), `task` (the task's `train_metrics`, global weighted means).
  """
  ctx = tf.distribute.get_replica_context()
  replicas = ctx.num_replicas_in_sync
  state = reset_rows(state, batch["reset"])
  global_weight = ctx.all_reduce(SUM, tf.reduce_sum(tf.cast(batch["weights"], tf.float32)))
  lso = _loss_scale_optimizer(optimizer)
  loss_scale = tf.identity(lso.dynamic_scale) if lso is not None else None

  local_loss, new_state, grads, local_metrics = forward_backward_fn(task, batch, state,
                                                                    global_weight, loss_scale)
  if replicas > 1:
    # Sparse (embedding) gradients are reduced as dense tensors: tf.distribute all-gathers
    # IndexedSlices with collectives inside a cond whose lengths vary per step, and inside the step
    # loop those collectives can pair up across iterations (shape-mismatch aborts).
    grads = [tf.convert_to_tensor(g) for g in grads]
  extra = []
  if stop_request is not None:
    # Read after the forward and backward pass, so a request made during this step ends the loop
    # after it; identity places the copy on this replica's device, where the all-reduce wants it.
    with tf.control_dependencies([local_loss]):
      value = stop_request.read_value() if hasattr(stop_request, "read_value") else stop_request
      extra = [tf.identity(tf.cast(value, tf.float32))]
  names = list(local_metrics)
  reduced = ctx.all_reduce(SUM, [local_loss] + extra + [local_metrics[k] for k in names]
                           + list(grads))
  head = 1 + len(extra) + len(names)
  loss, grads = reduced[0], [merge_duplicate_rows(g) for g in reduced[head:]]
  task_metrics = dict(zip(names, reduced[1 + len(extra):head]))
  if loss_scale is not None:
    grads = [scale_gradient(g, 1.0 / loss_scale) for g in grads]
  grad_norm = tf.linalg.global_norm(grads)
  finite = tf.logical_and(_is_finite(loss), _is_finite(grad_norm))
  if clip_norm is not None:
    grads, _ = tf.clip_by_global_norm(grads, clip_norm, use_norm=grad_norm)
  # Hand each replica 1/R of the reduced gradient: the optimizer sums across replicas once more.
  grads = [scale_gradient(g, 1.0 / replicas) for g in grads] if replicas > 1 else grads

  ctx.merge_call(_apply_if_finite, args=(task, optimizer, grads, finite, counters))
  new_state = tf.nest.map_structure(lambda new, old: tf.where(finite, new, old), new_state, state)
  metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "weight": global_weight,
             "task": task_metrics}
  if stop_request is not None:
    metrics["stop"] = reduced[1] > 0
  return tf.nest.map_structure(tf.stop_gradient, new_state), metrics


def _apply_if_finite(strategy, task, optimizer, grads, finite, counters):
  """Cross-replica: apply the update on every replica if the (replica-identical) `finite` is True.

  The `tf.cond` lives in cross-replica context because the optimizer's update synchronises replicas
  (merge_call), which tf.distribute does not allow inside a replica-context cond.
  """
  finite = strategy.experimental_local_results(finite)[0]
  lso = _loss_scale_optimizer(optimizer)
  inner = lso.inner_optimizer if lso is not None else optimizer
  variables = task.model.trainable_variables

  def apply():
    strategy.extended.call_for_each_replica(
        lambda g: inner.apply_gradients(zip(g, variables)), args=(grads,))
    counters.consecutive.assign(0)
    if lso is not None:  # LossScaleOptimizer's rule: double the scale after enough good steps.
      grow = tf.equal(lso.step_counter, lso.dynamic_growth_steps - 1)
      lso.dynamic_scale.assign(tf.where(grow, lso.dynamic_scale * 2.0, lso.dynamic_scale))
      lso.step_counter.assign(tf.where(grow, tf.zeros_like(lso.step_counter), lso.step_counter + 1))
    return tf.constant(True)

  def skip():
    counters.total.assign_add(1)
    counters.consecutive.assign_add(1)
    if lso is not None:  # ...and halve it on a non-finite step.
      lso.step_counter.assign(tf.zeros_like(lso.step_counter))
      lso.dynamic_scale.assign(lso.dynamic_scale * 0.5)
    return tf.constant(False)

  return tf.cond(finite, apply, skip)


def eval_step(task, batch, state):
  """One eval chunk in replica context: no dropout, no update.

  Args:
    task: The `tbptt.trainer.task.Task`.
    batch: This replica's eval chunk.
    state: Carried eval state (flagged rows are reset here).

  Returns:
    (new_state, sums): sums are float64 scalars over this replica's rows: `loss` (sum of weighted
    loss), `weight` (sum of weights) and whatever `task.eval_sums` adds.
  """
  state = reset_rows(state, batch["reset"])
  predictions, new_state = run_model(task.model, batch, state, training=False)
  sums = {"loss": weighted_loss_sum(task.loss(batch, predictions), batch["weights"]),
          "weight": tf.reduce_sum(tf.cast(batch["weights"], tf.float32))}
  extra = dict(task.eval_sums(batch, predictions))
  clash = set(extra) & set(sums)
  if clash:
    raise ValueError(f"Task.eval_sums must not return the reserved keys {sorted(clash)}")
  sums.update(extra)
  return new_state, {k: tf.cast(v, tf.float64) for k, v in sums.items()}
