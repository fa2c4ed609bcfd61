"""Runs a task's model over one chunk, carrying the state from where the batch says.

A plain chunk runs in one call and carries the state after its last step. Two optional batch keys
change that (see `inputs`):

  mask [b, T] bool       False at padding: the model carries its state through those steps.
  carry_steps, burn_in   The state to carry is the one after `carry_steps` (an int32 scalar
                         tensor, l) steps, and `burn_in` (a Python int, k) steps follow it in the
                         chunk that the next chunk reads again as its context. Then

      steps [0, T - k), masked from l on  -> predictions of steps [0, l), carried state
      steps [l, l + k), from that state   -> predictions of steps [l, l + k)

and the predictions are put back in step order (those of steps >= l + k are padding). Both calls
have static shapes, so a varying l never retraces, and together they run T steps, as one call
would.
"""

import tensorflow as tf


def run_model(model, batch, state, training: bool):
  """(predictions, state to carry) of `model` over the chunk `batch` from `state`.

  Args:
    model: `model(inputs, state, training=..., mask=None) -> (predictions, new_state)`; `mask`
      is passed only when the batch has one.
    batch: The chunk (inputs [b, T, ...] and the optional keys of the module docstring).
    state: The state at the chunk's first step.
    training: Passed to the model.

  Returns:
    (predictions, whose tensors are [b, T, ...], the state to carry into the next chunk).
  """
  inputs, mask = batch["inputs"], batch.get("mask")
  burn_in = int(batch.get("burn_in", 0))
  if burn_in == 0:
    return _call(model, inputs, state, training, mask)
  carry = tf.cast(batch["carry_steps"], tf.int32)
  length = inputs.shape[1]
  head = length - burn_in
  if mask is None:
    mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
  mask = tf.cast(mask, tf.bool)
  before_carry = tf.range(head) < carry
  first, carried = _call(model, inputs[:, :head], state, training,
                         tf.logical_and(mask[:, :head], before_carry[None]))
  rows = tf.shape(inputs)[0]
  tail = tf.slice(inputs, tf.stack([0, carry] + [0] * (inputs.shape.rank - 2)),
                  tf.concat([[rows, burn_in], tf.shape(inputs)[2:]], 0))
  tail_mask = tf.slice(mask, tf.stack([0, carry]), tf.stack([rows, burn_in]))
  second, _ = _call(model, tail, carried, training, tail_mask)
  steps = tf.range(length)
  order = tf.where(steps < carry, steps, head + tf.minimum(steps - carry, burn_in - 1))
  predictions = tf.nest.map_structure(
      lambda a, b: tf.gather(tf.concat([a, b], axis=1), order, axis=1), first, second)
  return predictions, carried


def _call(model, inputs, state, training, mask):
  if mask is None:
    return model(inputs, state, training=training)
  return model(inputs, state, training=training, mask=mask)
