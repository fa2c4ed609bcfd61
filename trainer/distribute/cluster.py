"""Who is who in a multi-worker cluster, and what a failed collective says about a lost peer."""

import contextlib
import re

import tensorflow as tf

from tbptt.trainer.errors import TrainingError


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
  return chief_of(resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id)


def chief_of(cluster: dict, task_type: str, task_id: int) -> bool:
  """`is_chief` for a cluster {job: [address, ...]}: 'chief' (or 'evaluator'), else 'worker' 0."""
  if task_type in ("chief", "evaluator"):
    return True
  return "chief" not in cluster and task_type == "worker" and task_id == 0


def coordination_leader(cluster: dict) -> str:
  """The task that runs the coordination service: 'ps' 0, else 'chief' 0, else 'worker' 0."""
  job = next((j for j in ("ps", "chief") if j in cluster), "worker")
  return f"/job:{job}/replica:0/task:0"


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


_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                tf.errors.CancelledError, tf.errors.InternalError)


@contextlib.contextmanager
def lost_workers_as_training_errors(strategy: tf.distribute.Strategy, step_fn):
  """Multi-worker: a collective that fails because a peer died is one TrainingError naming it.

  Args:
    strategy: The strategy training runs under (nothing is translated outside multi-worker).
    step_fn: Returns the global step, for the message.
  """
  if not is_multi_worker(strategy):
    yield
    return
  try:
    yield
  except _PEER_ERRORS as e:
    message = lost_worker_message(strategy, e, step_fn())
    if message is None:
      raise
    raise TrainingError(message) from None
