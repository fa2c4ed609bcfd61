"""Shared test set-up: quiet TensorFlow, two logical CPU devices, a clean gin config per test."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Token-id caches of the test corpora go to a folder of this session (subprocesses inherit it).
if "TBPTT_CACHE_DIR" not in os.environ:
  os.environ["TBPTT_CACHE_DIR"] = tempfile.mkdtemp(prefix="tbptt-test-cache-")
  atexit.register(shutil.rmtree, os.environ["TBPTT_CACHE_DIR"], True)

import gin  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Logical devices must be configured before TensorFlow initialises its runtime: split the one CPU
# into two so that MirroredStrategy runs with two replicas in the tests (stand-ins for two GPUs).
NUM_TEST_CPUS = 2
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_TEST_CPUS)])


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()
