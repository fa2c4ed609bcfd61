"""Moving per-replica values (the carried TBPTT state, metrics) in and out of a strategy."""

import tensorflow as tf

from tbptt.trainer.errors import ConfigError


def rows_per_replica(strategy: tf.distribute.Strategy, global_rows: int, what: str) -> int:
  """Rows each replica owns: global_rows / replicas, which must divide evenly.

  Raises:
    ConfigError: global_rows is not a multiple of the number of replicas.
  """
  replicas = strategy.num_replicas_in_sync
  if global_rows % replicas:
    raise ConfigError(f"{what} is {global_rows}, which does not split evenly over {replicas} "
                      f"replicas; use a multiple of {replicas}", parameter=what)
  return global_rows // replicas


def sum_over_replicas(strategy: tf.distribute.Strategy, value):
  """Sums a per-replica nest over every replica of every worker (cross-replica context).

  An all-reduce in replica context rather than `strategy.reduce`, which rejects the plain tensors
  `strategy.run` returns when a worker has a single replica.
  """
  def all_reduce(v):
    # identity: places the values on this replica's device (the all-reduce reduces to it).
    v = tf.nest.map_structure(tf.identity, v)
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, v)
  return first_replica(strategy, strategy.run(all_reduce, args=(value,)))


def first_replica(strategy: tf.distribute.Strategy, value):
  """The first replica's copy of a value all replicas computed identically (or a plain tensor)."""
  return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)


def local_values(strategy: tf.distribute.Strategy, value):
  """`value` as `strategy.run` returns it: plain tensors when this process has one replica.

  With one local replica (one worker of a multi-worker cluster, or one device) `strategy.run`
  returns plain tensors, not per-replica values; a loop that carries such a value must start with
  the same structure it ends with.
  """
  try:
    local_replicas = len(strategy.extended.worker_devices)
  except RuntimeError:  # The default strategy: one replica, plain tensors already.
    local_replicas = 1
  if local_replicas != 1:
    return value
  return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)


def distribute_rows(strategy: tf.distribute.Strategy, global_value, rows: int):
  """Splits a nest of global [B, ...] tensors over the replicas: replica r gets rows r*b:(r+1)*b."""
  def value_fn(ctx):
    start = ctx.replica_id_in_sync_group * rows
    return tf.nest.map_structure(lambda t: tf.identity(t[start:start + rows]), global_value)
  return strategy.experimental_distribute_values_from_function(value_fn)


def gather_rows(strategy: tf.distribute.Strategy, value):
  """Concatenates every replica's rows of a nest of [b, ...] values into global [B, ...] tensors."""
  if strategy.num_replicas_in_sync == 1:
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)
  return tf.nest.map_structure(lambda v: strategy.gather(v, axis=0), value)
