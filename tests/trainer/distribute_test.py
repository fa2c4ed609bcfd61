"""Strategies from gin names, their errors, and moving per-replica rows in and out."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from tbptt.trainer import distribute
from tbptt.trainer.distribute import make_strategy
from tbptt.trainer.errors import ConfigError


def test_default_strategy():
  strategy = make_strategy()
  assert strategy is tf.distribute.get_strategy()
  assert strategy.num_replicas_in_sync == 1


def test_mirrored_over_logical_cpus_from_gin():
  gin.parse_config("distribution.strategy = 'mirrored'\ndistribution.cpu_devices = 2")
  strategy = make_strategy()
  assert isinstance(strategy, tf.distribute.MirroredStrategy)
  assert strategy.num_replicas_in_sync == 2
  devices = [d.split("/")[-1] for d in strategy.extended.worker_devices]
  assert devices == ["device:CPU:0", "device:CPU:1"]


def test_mirrored_with_more_cpus_than_the_started_runtime_has():
  with pytest.raises(ConfigError, match="distribution.cpu_devices=3 needs 3 logical CPU devices"):
    make_strategy("mirrored", cpu_devices=3)


@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "gpu"}, "distribution.strategy must be one of"),
    ({"cpu_devices": -1}, "distribution.cpu_devices must be a non-negative integer"),
    ({"cpu_devices": 1.5}, "distribution.cpu_devices"),
])
def test_bad_values_raise_config_error(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    make_strategy(**kwargs)


def test_multi_worker_needs_tf_config(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ConfigError, match="TF_CONFIG"):
    make_strategy("multi_worker")


def test_rows_must_split_evenly():
  strategy = make_strategy("mirrored", cpu_devices=2)
  assert distribute.rows_per_replica(strategy, 6, "Task.global_batch_size") == 3
  with pytest.raises(ConfigError, match="Task.global_batch_size is 5, which does not split evenly"):
    distribute.rows_per_replica(strategy, 5, "Task.global_batch_size")


def test_rows_round_trip_through_replicas():
  strategy = make_strategy("mirrored", cpu_devices=2)
  value = {"h": tf.reshape(tf.range(12.0), [4, 3]), "c": tf.constant([[1.0], [2.0], [3.0], [4.0]])}
  distributed = distribute.distribute_rows(strategy, value, rows=2)
  first, second = strategy.experimental_local_results(distributed["h"])
  np.testing.assert_array_equal(first, value["h"][:2])  # replica r owns rows [2r, 2r + 2)
  np.testing.assert_array_equal(second, value["h"][2:])
  back = tf.function(lambda v: distribute.gather_rows(strategy, v))(distributed)
  for key in value:
    np.testing.assert_array_equal(back[key], value[key])


CLUSTER = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222", "10.0.0.3:22220"]}
HEARTBEAT = ("Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
             "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\n"
             "The tasks have crashed.")
REFUSED = ("{{function_node __inference_<lambda>_3805}} Collective ops is aborted by: failed to "
           "connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:2222: Failed to connect "
           "to remote host: Connection refused")


@pytest.mark.parametrize("error, me, expected", [
    (tf.errors.UnavailableError(None, None, HEARTBEAT), ("worker", 0),
     "lost worker 1 (10.0.0.2:2222) at step 7: it stopped sending heartbeats"),
    (tf.errors.UnavailableError(None, None, REFUSED), ("worker", 2),
     "lost worker 0 (10.0.0.1:2222) at step 7: its connection was lost"),
    (tf.errors.DeadlineExceededError(None, None, "Collective timed out on /job:worker/task:2"),
     ("worker", 0), "lost worker 2 (10.0.0.3:22220) at step 7: a collective op waited longer "
     "than distribution.collective_timeout_seconds"),
    (tf.errors.AbortedError(None, None, "Collective ops is aborted by: something else\nmore"),
     ("worker", 0), "lost a worker at step 7: Collective ops is aborted by: something else;"),
])
def test_lost_worker_is_named_by_task_or_by_address(error, me, expected):
  message = distribute.describe_lost_worker(CLUSTER, me, error, 7)
  assert message.startswith(f"multi-worker training {expected}"), message
  assert message.endswith("restart every worker with the same command to resume from the last "
                          "checkpoint")
  assert "\n" not in message


def test_errors_that_name_no_peer_are_not_blamed_on_one():
  error = tf.errors.InternalError(None, None, "a kernel failed")
  assert distribute.describe_lost_worker(CLUSTER, ("worker", 0), error, 7) is None


def test_an_address_is_not_matched_inside_a_longer_port():
  error = tf.errors.UnavailableError(None, None, "ipv4:10.0.0.3:22220: Connection refused")
  message = distribute.describe_lost_worker(CLUSTER, ("worker", 0), error, 1)
  assert "lost worker 2 (10.0.0.3:22220)" in message


@pytest.mark.parametrize("kwargs, match", [
    ({"heartbeat_timeout_seconds": 0}, "distribution.heartbeat_timeout_seconds must be a positive"),
    ({"heartbeat_timeout_seconds": 2.5}, "distribution.heartbeat_timeout_seconds"),
    ({"collective_timeout_seconds": -1}, "distribution.collective_timeout_seconds must be a "),
])
def test_bad_multi_worker_timeouts_raise_config_error(monkeypatch, kwargs, match):
  monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                                  '"task": {"type": "worker", "index": 0}}')
  with pytest.raises(ConfigError, match=match):
    make_strategy("multi_worker", **kwargs)


def test_local_strategies_are_single_worker_chiefs():
  strategy = make_strategy("mirrored", cpu_devices=2)
  assert distribute.is_chief(strategy) and not distribute.is_multi_worker(strategy)
  assert distribute.task_name(strategy) == "single"


@pytest.mark.parametrize("cluster, task, chief", [
    ({"worker": ["a", "b"]}, ("worker", 0), True),
    ({"worker": ["a", "b"]}, ("worker", 1), False),
    ({"chief": ["c"], "worker": ["a"]}, ("worker", 0), False),
    ({"chief": ["c"], "worker": ["a"]}, ("chief", 0), True),
])
def test_the_chief_is_the_chief_job_or_worker_0(cluster, task, chief):
  assert distribute.cluster.chief_of(cluster, *task) == chief


def test_the_coordination_leader_is_the_first_ps_chief_or_worker():
  assert distribute.cluster.coordination_leader({"worker": ["a"]}) == "/job:worker/replica:0/task:0"
  assert distribute.cluster.coordination_leader(
      {"chief": ["c"], "worker": ["a"]}) == "/job:chief/replica:0/task:0"
