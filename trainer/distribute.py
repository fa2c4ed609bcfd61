"""Distribution strategies, and moving the per-replica TBPTT state in and out of them.

`make_strategy()` is the first call of every experiment: it picks the strategy and applies the
process-wide settings that must precede model construction (seeds, op determinism, mixed precision;
see `runtime`).
"""

import json
import os

import gin
import tensorflow as tf

from trainer import runtime
from trainer.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@gin.configurable("distribution")
def make_strategy(strategy: str = "default", cpu_devices: int = 0) -> tf.distribute.Strategy:
  """Builds the `tf.distribute.Strategy` every variable is created under.

  Also applies `Trainer.seed`, `Trainer.deterministic` and `Trainer.mixed_precision` (see
  `runtime.configure_from_gin`): the model's weights and dtype policy are fixed when the task is
  built, which happens between this call and the Trainer's.

  Args:
    strategy: 'default' (one device, `tf.distribute.get_strategy()`); 'mirrored' (synchronous
      replicas on all GPUs or, without GPUs, on `cpu_devices` logical CPUs); 'multi_worker'
      (`MultiWorkerMirroredStrategy`, cluster from the TF_CONFIG environment variable); 'tpu'
      (`TPUStrategy`, TPU found by `TPUClusterResolver`).
    cpu_devices: For 'mirrored' without GPUs: split the CPU into this many logical devices (one
      replica each). 0 uses the logical CPUs that already exist. Must be set before TensorFlow
      starts its runtime (before the first op), unless that many logical CPUs already exist.

  Returns:
    The strategy; build the task and the Trainer inside `strategy.scope()`.

  Raises:
    ConfigError: Unknown strategy, bad cpu_devices, missing TF_CONFIG, no TPU.
  """
  if strategy not in STRATEGIES:
    raise ConfigError(f"distribution.strategy must be one of {', '.join(STRATEGIES)}, got "
                      f"{strategy!r}; set --gin_bindings=\"distribution.strategy='mirrored'\"")
  if isinstance(cpu_devices, bool) or not isinstance(cpu_devices, int) or cpu_devices < 0:
    raise ConfigError(f"distribution.cpu_devices must be a non-negative integer, got "
                      f"{cpu_devices!r}; set --gin_bindings='distribution.cpu_devices=2'")
  runtime.configure_from_gin()
  if strategy == "default":
    return tf.distribute.get_strategy()
  if strategy == "mirrored":
    return _mirrored(cpu_devices)
  if strategy == "multi_worker":
    return _multi_worker()
  return _tpu()


def _mirrored(cpu_devices: int) -> tf.distribute.Strategy:
  if tf.config.list_physical_devices("GPU"):
    return tf.distribute.MirroredStrategy()
  cpu = tf.config.list_physical_devices("CPU")[0]
  configured = tf.config.get_logical_device_configuration(cpu) or []
  if cpu_devices and len(configured) < cpu_devices:
    try:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)])
    except RuntimeError:
      pass  # The runtime is already up: use what exists if it is enough (checked below).
  logical = tf.config.list_logical_devices("CPU")
  wanted = cpu_devices or len(logical)
  if len(logical) < wanted:
    raise ConfigError(
        f"distribution.cpu_devices={cpu_devices} needs {cpu_devices} logical CPU devices, but "
        f"TensorFlow already started with {len(logical)}; call make_strategy() before any "
        "TensorFlow op runs")
  # Sums on one device rather than collectives: on one host's CPUs that is as fast, and collective
  # instance keys would clash between strategies created in one process.
  return tf.distribute.MirroredStrategy([d.name for d in logical[:wanted]],
                                        cross_device_ops=tf.distribute.ReductionToOneDevice())


def _multi_worker() -> tf.distribute.Strategy:
  config = os.environ.get("TF_CONFIG")
  if not config:
    raise ConfigError("distribution.strategy='multi_worker' reads the cluster from the TF_CONFIG "
                      "environment variable, which is not set; export "
                      "TF_CONFIG='{\"cluster\": ..., \"task\": ...}'")
  try:
    json.loads(config)
  except ValueError as e:
    raise ConfigError(f"TF_CONFIG is not valid JSON ({e}): {config[:80]!r}") from None
  return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu() -> tf.distribute.Strategy:
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"distribution.strategy='tpu' found no usable TPU: {message}") from None
  return tf.distribute.TPUStrategy(resolver)


def rows_per_replica(strategy: tf.distribute.Strategy, global_rows: int, what: str) -> int:
  """Rows each replica owns: global_rows / replicas, which must divide evenly.

  Raises:
    ConfigError: global_rows is not a multiple of the number of replicas.
  """
  replicas = strategy.num_replicas_in_sync
  if global_rows % replicas:
    raise ConfigError(f"{what} is {global_rows}, which does not split evenly over {replicas} "
                      f"replicas; use a multiple of {replicas}")
  return global_rows // replicas


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this worker writes summaries, the operative config and the real checkpoints."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0)


def first_replica(strategy: tf.distribute.Strategy, value):
  """The first replica's copy of a value all replicas computed identically (or a plain tensor)."""
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
