"""Distribution strategies, and moving the per-replica TBPTT state in and out of them.

`make_strategy()` is the first call of every experiment: it picks the strategy and applies the
process-wide settings that must precede model construction (seeds, op determinism, mixed precision;
see `runtime`).
"""

import json
import os
import re

import gin
import tensorflow as tf
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.distribute import multi_worker_util
from tensorflow.python.eager import context

from tbptt.trainer import runtime
from tbptt.trainer.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@gin.configurable("distribution")
def make_strategy(strategy: str = "default", cpu_devices: int = 0, *,
                  heartbeat_timeout_seconds: int = 10,
                  collective_timeout_seconds: float | None = None) -> tf.distribute.Strategy:
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
    raise ConfigError(f"distribution.strategy must be one of {', '.join(STRATEGIES)}, got "
                      f"{strategy!r}; set --gin_bindings=\"distribution.strategy='mirrored'\"")
  if isinstance(cpu_devices, bool) or not isinstance(cpu_devices, int) or cpu_devices < 0:
    raise ConfigError(f"distribution.cpu_devices must be a non-negative integer, got "
                      f"{cpu_devices!r}; set --gin_bindings='distribution.cpu_devices=2'")
  if strategy == "multi_worker":
    # MultiWorkerMirroredStrategy must be created before any other op runs in this process.
    built = _multi_worker(heartbeat_timeout_seconds, collective_timeout_seconds)
    runtime.configure_from_gin()
    return built
  runtime.configure_from_gin()
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
        "TensorFlow op runs")
  # Sums on one device rather than collectives: on one host's CPUs that is as fast, and collective
  # instance keys would clash between strategies created in one process.
  return tf.distribute.MirroredStrategy([d.name for d in logical[:wanted]],
                                        cross_device_ops=tf.distribute.ReductionToOneDevice())


def _multi_worker(heartbeat_timeout_seconds, collective_timeout_seconds) -> tf.distribute.Strategy:
  if isinstance(heartbeat_timeout_seconds, bool) or not isinstance(heartbeat_timeout_seconds, int) \
          or heartbeat_timeout_seconds <= 0:
    raise ConfigError("distribution.heartbeat_timeout_seconds must be a positive integer, got "
                      f"{heartbeat_timeout_seconds!r}; set "
                      "--gin_bindings='distribution.heartbeat_timeout_seconds=10'")
  number = isinstance(collective_timeout_seconds, (int, float)) and not isinstance(
      collective_timeout_seconds, bool)
  if collective_timeout_seconds is not None and not (number and collective_timeout_seconds > 0):
    raise ConfigError("distribution.collective_timeout_seconds must be a positive number or None, "
                      f"got {collective_timeout_seconds!r}; set "
                      "--gin_bindings='distribution.collective_timeout_seconds=300'")
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
  # The coordination service is what MultiWorkerMirroredStrategy configures by itself, plus an
  # explicit heartbeat timeout: how long a dead worker can go unnoticed.
  jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
          for job in ("chief", "worker") if job in cluster.jobs]
  context.context().configure_coordination_service(
      service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster),
      coordinated_jobs=jobs, heartbeat_timeout_in_ms=heartbeat_timeout_seconds * 1000)
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


def _resolver(strategy: tf.distribute.Strategy):
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return None
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or resolver.task_type is None or not resolver.cluster_spec().jobs:
    return None  # Local mode: one worker.
  return resolver


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  """Whether replicas live in more than one process (they must agree on every collective)."""
  return _resolver(strategy) is not None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this worker writes summaries, the operative config and the real checkpoints.

  The chief is task type 'chief', or 'worker' 0 when the cluster has no 'chief' job.
  """
  resolver = _resolver(strategy)
  if resolver is None:
    return True
  return multi_worker_util.is_chief(resolver.cluster_spec(), resolver.task_type, resolver.task_id)


def task_name(strategy: tf.distribute.Strategy) -> str:
  """'worker 1' (this process's task in the cluster), or 'single' outside multi-worker."""
  resolver = _resolver(strategy)
  return "single" if resolver is None else f"{resolver.task_type} {resolver.task_id}"


_TASK = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")
_CONNECTION_LOST = ("socket closed", "connection reset", "connection refused", "failed to connect",
                    "broken pipe", "end of file", "unavailable")


def lost_worker_message(strategy: tf.distribute.Strategy, error: tf.errors.OpError,
                        step: int) -> str | None:
  """One line for a collective that failed because a peer died or hung, naming the peer.

  TensorFlow names the peer either by task (`/job:worker/replica:0/task:1`, when the coordination
  service saw its heartbeats stop) or by address (`ipv4:127.0.0.1:2223`, when a connection to it
  was refused); both are mapped to 'worker 1 (127.0.0.1:2223)'.

  Returns:
    The message, or None if the error names no peer and is not of a kind a lost peer causes.
  """
  resolver = _resolver(strategy)
  cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
  me = (resolver.task_type, resolver.task_id) if resolver is not None else None
  return describe_lost_worker(cluster, me, error, step)


def describe_lost_worker(cluster: dict, me: tuple | None, error: Exception,
                         step: int) -> str | None:
  """`lost_worker_message` for a cluster {job: [address, ...]} seen from task `me` (job, index)."""
  text = str(getattr(error, "message", None) or error)
  lost = []
  for job, index in _TASK.findall(text):
    task = (job, int(index))
    if task != me and task not in lost and job in cluster and int(index) < len(cluster[job]):
      lost.append(task)
  if not lost:
    for job, addresses in sorted(cluster.items()):
      for index, address in enumerate(addresses):
        named = re.search(re.escape(address) + r"(?!\d)", text)
        if named and (job, index) != me:
          lost.append((job, index))
  peer_errors = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                 tf.errors.AbortedError)
  if not lost and not isinstance(error, peer_errors):
    return None
  lower = text.lower()
  if "heartbeat" in lower:
    why = "it stopped sending heartbeats (dead, frozen or unreachable)"
  elif isinstance(error, tf.errors.DeadlineExceededError):
    why = ("a collective op waited longer than distribution.collective_timeout_seconds for it "
           "(stuck or dead)")
  elif any(s in lower for s in _CONNECTION_LOST) or isinstance(error, tf.errors.UnavailableError):
    why = "its connection was lost (its process ended or its host is unreachable)"
  else:
    why = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    why = why[:200]
  names = ", ".join(f"{job} {index} ({cluster[job][index]})" for job, index in lost)
  who = f"lost {names}" if names else "lost a worker"
  return (f"multi-worker training {who} at step {step}: {why}; check that worker's log, then "
          "restart every worker with the same command to resume from the last checkpoint")


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
