"""`make_strategy()`: the `tf.distribute.Strategy` every variable is created under.

It is the first call of every experiment (a multi-worker strategy must exist before any other op
runs); the process set-up (seeds, determinism, precision: `runtime.Runtime`) comes right after it.
"""

import json
import os

import gin
import tensorflow as tf
# The one private TensorFlow import of the trainer: no public API sets the coordination service's
# heartbeat timeout, which is what turns a dead worker into an error instead of a hang.
from tensorflow.python.eager import context

from tbptt.trainer.distribute.cluster import coordination_leader
from tbptt.trainer.errors import ConfigError, invalid

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@gin.configurable("distribution")
def make_strategy(strategy: str = "default", cpu_devices: int = 0, *,
                  heartbeat_timeout_seconds: int = 10,
                  collective_timeout_seconds: float | None = None) -> tf.distribute.Strategy:
  """Builds the `tf.distribute.Strategy` every variable is created under.

  Args:
    strategy: 'default' (one device, `tf.distribute.get_strategy()`); 'mirrored' (synchronous
      replicas on all GPUs or, without GPUs, on `cpu_devices` logical CPUs); 'multi_worker'
      (`MultiWorkerMirroredStrategy`, cluster from the TF_CONFIG environment variable); 'tpu'
      (`TPUStrategy`, TPU found by `TPUClusterResolver`).
    cpu_devices: For 'mirrored' without GPUs: split the CPU into this many logical devices (one
      replica each). 0 uses the logical CPUs that already exist. Must be set before TensorFlow
      starts its runtime (before the first op), unless that many logical CPUs already exist.
    heartbeat_timeout_seconds: 'multi_worker': a worker that sends no heartbeat to the coordination
      service for this long is declared lost, and every other worker's next (or pending)
      collective fails, so the run ends with an error naming it instead of hanging.
    collective_timeout_seconds: 'multi_worker': a collective op (gradient all-reduce, state
      gather) that waits longer than this fails; catches a peer that is alive but stuck. None: no
      limit (a live peer may take as long as it needs, e.g. to trace or to save).

  Returns:
    The strategy; build the task and the Trainer inside `strategy.scope()`.

  Raises:
    ConfigError: Unknown strategy, bad cpu_devices, missing TF_CONFIG, no TPU.
  """
  if strategy not in STRATEGIES:
    raise invalid("distribution.strategy", f"one of {', '.join(STRATEGIES)}", strategy)
  if isinstance(cpu_devices, bool) or not isinstance(cpu_devices, int) or cpu_devices < 0:
    raise invalid("distribution.cpu_devices", "a non-negative integer", cpu_devices)
  if strategy == "multi_worker":
    return _multi_worker(heartbeat_timeout_seconds, collective_timeout_seconds)
  if strategy == "default":
    return tf.distribute.get_strategy()
  if strategy == "mirrored":
    return _mirrored(cpu_devices)
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
        "TensorFlow op runs", parameter="distribution.cpu_devices")
  # Sums on one device rather than collectives: on one host's CPUs that is as fast, and collective
  # instance keys would clash between strategies created in one process.
  return tf.distribute.MirroredStrategy([d.name for d in logical[:wanted]],
                                        cross_device_ops=tf.distribute.ReductionToOneDevice())


def _multi_worker(heartbeat_timeout_seconds, collective_timeout_seconds) -> tf.distribute.Strategy:
  if isinstance(heartbeat_timeout_seconds, bool) or not isinstance(heartbeat_timeout_seconds, int) \
          or heartbeat_timeout_seconds <= 0:
    raise invalid("distribution.heartbeat_timeout_seconds", "a positive integer",
                  heartbeat_timeout_seconds)
  number = isinstance(collective_timeout_seconds, (int, float)) and not isinstance(
      collective_timeout_seconds, bool)
  if collective_timeout_seconds is not None and not (number and collective_timeout_seconds > 0):
    raise invalid("distribution.collective_timeout_seconds", "a positive number or None",
                  collective_timeout_seconds)
  config = os.environ.get("TF_CONFIG")
  if not config:
    raise ConfigError("distribution.strategy='multi_worker' reads the cluster from the TF_CONFIG "
                      "environment variable, which is not set; export "
                      "TF_CONFIG='{\"cluster\": ..., \"task\": ...}'")
  try:
    json.loads(config)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec()
  except (ValueError, TypeError, AttributeError, KeyError) as e:
    raise ConfigError(f"TF_CONFIG is not a valid cluster description ({e}): "
                      f"{config[:80]!r}") from None
  if not cluster.jobs or resolver.task_type is None:
    raise ConfigError(f"TF_CONFIG needs a 'cluster' and a 'task': {config[:80]!r}")
  # The coordination service is what MultiWorkerMirroredStrategy configures by itself (every job
  # of the cluster takes part), plus an explicit heartbeat timeout: how long a dead worker can go
  # unnoticed.
  context.context().configure_coordination_service(
      service_type="standalone", service_leader=coordination_leader(cluster.as_dict()),
      heartbeat_timeout_in_ms=heartbeat_timeout_seconds * 1000)
  options = tf.distribute.experimental.CommunicationOptions(
      timeout_seconds=None if collective_timeout_seconds is None
      else float(collective_timeout_seconds))
  return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                   communication_options=options)


def _tpu() -> tf.distribute.Strategy:
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"distribution.strategy='tpu' found no usable TPU: {message}") from None
  return tf.distribute.TPUStrategy(resolver)
