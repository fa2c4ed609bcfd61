"""SIGTERM and SIGINT on a real training process: stop after the step, checkpoint there, resume.

Every run is `toy_run.py` in its own process, signalled with os.kill. Steps are slowed down (a
sleep in the input pipeline that also records the step being fetched), and a loop is 1000 steps
long, so a stop in the middle of a loop is seen as such.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tbptt.trainer.checkpoint_files import is_complete
from events import read_scalars

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_run.py")
STEPS = 40
LONG_LOOPS = ["--steps_per_loop", "1000"]


def start(model_dir, train_steps, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen([sys.executable, SCRIPT, str(model_dir), str(train_steps), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process, timeout=300):
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


def read_progress(path) -> int:
  """The 0-based step the process is fetching (-1 before the first)."""
  try:
    with open(path) as f:
      return int(f.read())
  except (OSError, ValueError):
    return -1


def wait_for_progress(process, path, step, timeout=120):
  deadline = time.time() + timeout
  while read_progress(path) < step:
    assert process.poll() is None, finish(process)
    assert time.time() < deadline, "training did not reach the step"
    time.sleep(0.005)
  return read_progress(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Losses of an uninterrupted 40-step run."""
  model_dir = tmp_path_factory.mktemp("reference")
  code, _, err = finish(start(model_dir, STEPS))
  assert code == 0, err
  return read_scalars(str(model_dir / "train"), "loss")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_after_the_current_step_checkpoints_it_and_resumes_bitwise(
        tmp_path, reference, signum):
  model_dir, progress = tmp_path / "run", str(tmp_path / "progress")
  process = start(model_dir, 10**5, "0", "--slow_seconds", "0.05", "--progress_file", progress,
                  "--binding", "Trainer.checkpoint_interval = 1000", *LONG_LOOPS)
  fetching = wait_for_progress(process, progress, 8)
  process.send_signal(signum)
  code, out, err = finish(process, timeout=60)

  name = signal.Signals(signum).name
  assert code == 128 + signum, err
  assert f"{name}: stopping after the current step" in err
  stopped = int(re.search(r"Stopped at step (\d+); rerun the same command to resume.", out)[1])
  # The step being fetched when the signal came, or the one after it, was the last one taken.
  assert fetching + 1 <= stopped <= fetching + 2 < STEPS
  checkpoints = str(model_dir / "checkpoints")
  latest = tf.train.latest_checkpoint(checkpoints)
  assert latest == os.path.join(checkpoints, f"ckpt-{stopped}") and is_complete(latest)
  assert int(tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE")) == stopped

  code, out, err = finish(start(model_dir, STEPS))
  assert code == 0, err
  assert read_scalars(str(model_dir / "train"), "loss") == reference


def test_second_signal_during_a_save_exits_at_once_and_the_last_checkpoint_restores(tmp_path):
  # 1024 units: 48 MB of variables and optimizer slots, about 0.1-0.2 s to save.
  model_dir, progress = tmp_path / "run", str(tmp_path / "progress")
  big = ["--units", "1024", "--binding", "Trainer.max_checkpoints = 1"]
  process = start(model_dir, 10**5, "0", "--slow_seconds", "0.05", "--progress_file", progress,
                  *LONG_LOOPS, *big)
  wait_for_progress(process, progress, 12)  # ckpt-10 is written.
  checkpoints = str(model_dir / "checkpoints")
  process.send_signal(signal.SIGTERM)
  deadline, in_progress = time.time() + 60, None
  while in_progress is None and process.poll() is None and time.time() < deadline:
    names = os.listdir(checkpoints)
    in_progress = next((n for n in names if "_temp" in n and not n.startswith("ckpt-10")), None)
  assert in_progress is not None, "no save in progress was seen"
  process.send_signal(signal.SIGTERM)
  sent = time.time()
  code, out, err = finish(process, timeout=60)
  exit_seconds = time.time() - sent

  assert code == 143, err
  assert "Second SIGTERM: exiting now, without a checkpoint" in err
  assert exit_seconds < 2.0
  assert "Stopped at step" not in out  # The save did not finish.
  # The state file still names the previous checkpoint, which is complete.
  state = tf.train.get_checkpoint_state(checkpoints)
  assert os.path.basename(state.model_checkpoint_path) == "ckpt-10"
  assert is_complete(os.path.join(checkpoints, "ckpt-10"))

  code, out, err = finish(start(model_dir, 12, *big))
  assert code == 0, err
  assert f"saved {checkpoints}/ckpt-12" in out
  # One loop, 10 -> 12: training went on from the restored checkpoint.
  assert [line for line in out.splitlines() if line.startswith("step ")] == ["step 12"]
