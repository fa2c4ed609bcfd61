"""Checkpoint files, retention, the best checkpoint, misfits and interrupted saves."""

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management
from tensorflow.python.util import deprecation

from file_digest import digest
from tbptt.trainer.checkpoint_files import is_complete
from tbptt.trainer.checkpointing import Checkpointer
from tbptt.trainer.errors import ConfigError


def make(directory, shape=(3,), max_to_keep=2, extra=False):
  objects = {"w": tf.Variable(tf.zeros(shape)), "step": tf.Variable(0, dtype=tf.int64)}
  if extra:
    objects["b"] = tf.Variable(1.0)
  return objects, Checkpointer(str(directory), max_to_keep=max_to_keep, **objects)


def test_save_names_files_by_step_keeps_the_newest_and_restores_the_newest(tmp_path):
  objects, checkpointer = make(tmp_path)
  for step in (10, 20, 30):
    objects["w"].assign([step] * 3)
    objects["step"].assign(step)
    checkpointer.save(step)
  names = set(os.listdir(tmp_path))
  assert {"checkpoint", "ckpt-20.index", "ckpt-30.index", "ckpt-30.data-00000-of-00001"} <= names
  assert "ckpt-10.index" not in names  # max_to_keep=2

  restored, fresh = make(tmp_path)
  assert fresh.restore() == os.path.join(tmp_path, "ckpt-30")
  assert int(restored["step"].numpy()) == 30
  np.testing.assert_array_equal(restored["w"].numpy(), [30.0] * 3)


def test_saves_restores_and_retention_keep_tensorflow_quiet(tmp_path, caplog):
  deprecation._PRINTED_WARNING.clear()  # Each deprecation warns once per process.
  _, checkpointer = make(tmp_path, max_to_keep=1)
  with caplog.at_level(logging.INFO):
    for step in (1, 2, 3):  # Each save past the first drops the one before.
      checkpointer.save(step)
    make(tmp_path)[1].restore()
  assert [(r.name, r.getMessage()) for r in caplog.records if not r.name.startswith("tbptt")] == []
  with caplog.at_level(logging.DEBUG):  # Unless asked for (a verbose run).
    checkpointer.save(4)
  assert any(r.name == "absl" for r in caplog.records)


def test_restore_without_checkpoint_returns_none(tmp_path):
  _, checkpointer = make(tmp_path)
  assert checkpointer.restore() is None and checkpointer.latest is None


def test_best_checkpoint_lives_in_its_own_directory(tmp_path):
  objects, checkpointer = make(tmp_path)
  objects["w"].assign([7.0] * 3)
  checkpointer.save_best(7)
  objects["w"].assign([9.0] * 3)
  checkpointer.save(9)
  assert checkpointer.best == os.path.join(tmp_path, "best", "ckpt-7")
  restored, fresh = make(tmp_path)
  fresh.restore(fresh.best)
  np.testing.assert_array_equal(restored["w"].numpy(), [7.0] * 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (4,)}, "shape"),          # same names, other shapes
    ({"extra": True}, "b"),              # an object the checkpoint does not have
])
def test_checkpoint_that_does_not_fit_raises_config_error_and_is_untouched(tmp_path, kwargs, match):
  objects, checkpointer = make(tmp_path)
  checkpointer.save(5)
  before = digest(tmp_path)
  _, other = make(tmp_path, **kwargs)
  expected = f"checkpoint {tmp_path}/ckpt-5 does not fit the model: .*{match}"
  with pytest.raises(ConfigError, match=expected):
    other.restore()
  assert digest(tmp_path) == before


def test_checkpoint_with_values_the_model_lacks_raises_config_error(tmp_path):
  _, checkpointer = make(tmp_path, extra=True)
  checkpointer.save(5)
  _, other = make(tmp_path)
  with pytest.raises(ConfigError, match="does not fit the model"):
    other.restore()


def test_a_save_cut_short_is_never_restored(tmp_path, monkeypatch):
  objects, checkpointer = make(tmp_path)
  objects["step"].assign(20)
  checkpointer.save(20)

  # A crash after the data files are written but before the `checkpoint` state file names them.
  def crash(*args, **kwargs):
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(checkpoint_management, "update_checkpoint_state_internal", crash)
  objects["step"].assign(30)
  with pytest.raises(KeyboardInterrupt):
    checkpointer.save(30)
  assert os.path.exists(os.path.join(tmp_path, "ckpt-30.index"))
  # And debris of a save killed mid-write.
  with open(os.path.join(tmp_path, "ckpt-40.data-00000-of-00001"), "wb") as f:
    f.write(b"\0" * 10)
  os.makedirs(os.path.join(tmp_path, "ckpt-40_temp", "part-00000-of-00001"))
  monkeypatch.undo()

  restored, fresh = make(tmp_path)
  assert fresh.restore() == os.path.join(tmp_path, "ckpt-20")
  assert int(restored["step"].numpy()) == 20


def test_latest_skips_a_listed_checkpoint_whose_files_are_gone(tmp_path):
  objects, checkpointer = make(tmp_path, max_to_keep=3)
  for step in (10, 20):
    objects["step"].assign(step)
    checkpointer.save(step)
  os.remove(os.path.join(tmp_path, "ckpt-20.data-00000-of-00001"))
  assert checkpointer.latest == os.path.join(tmp_path, "ckpt-10")
  assert checkpointer.checkpoints == [os.path.join(tmp_path, "ckpt-10")]
  restored, fresh = make(tmp_path)
  assert fresh.restore() == os.path.join(tmp_path, "ckpt-10")
  assert int(restored["step"].numpy()) == 10


def test_saving_a_listed_step_again_drops_it_first(tmp_path, monkeypatch):
  # After a rollback to step 10, training reaches step 20 again with other values.
  objects, checkpointer = make(tmp_path, max_to_keep=3)
  for step in (10, 20):
    objects["w"].assign([step] * 3)
    checkpointer.save(step)
  objects["w"].assign([99.0] * 3)

  def crash(*args, **kwargs):
    raise KeyboardInterrupt("killed")

  with monkeypatch.context() as patch:  # Killed while writing the new ckpt-20.
    patch.setattr(tf.train.Checkpoint, "write", crash)
    patch.setattr(tf.train.Checkpoint, "_write", crash, raising=False)
    with pytest.raises(KeyboardInterrupt):
      checkpointer.save(20)
  # Not an old index with new data (or the reverse) under the name the state file points at.
  assert checkpointer.latest == os.path.join(tmp_path, "ckpt-10")
  assert not os.path.exists(os.path.join(tmp_path, "ckpt-20.index"))

  assert checkpointer.save(20) == os.path.join(tmp_path, "ckpt-20")
  assert checkpointer.checkpoints == [os.path.join(tmp_path, f"ckpt-{s}") for s in (10, 20)]
  restored, fresh = make(tmp_path)
  fresh.restore()
  np.testing.assert_array_equal(restored["w"].numpy(), [99.0] * 3)


def test_scratch_saves_of_other_workers_leave_nothing(tmp_path):
  objects, chief = make(tmp_path / "checkpoints")
  chief.save(5)
  scratch = str(tmp_path / "workertemp_worker_1")
  worker = Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=2, write_directory=scratch,
                        **objects)
  assert worker.latest == chief.latest  # Workers restore the chief's checkpoints.
  assert worker.save(10).startswith(scratch) and worker.save_best(10).startswith(scratch)
  assert not os.path.exists(scratch)
  assert chief.checkpoints == [str(tmp_path / "checkpoints" / "ckpt-5")]


SAVE_LOOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "save_loop.py")


@pytest.mark.slow
def test_sigkill_in_the_middle_of_saves_never_leaves_a_partial_checkpoint_to_restore(tmp_path):
  """SIGKILL while 64 MB checkpoints are being written, at several points of the write; each
  restart restores the newest complete checkpoint and checks every value against its step."""
  directory = str(tmp_path)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  saved, killed_during = 0, []
  for delay in (0.0, 0.03, 0.06, 0.1):
    process = subprocess.Popen([sys.executable, SAVE_LOOP, directory], stdout=subprocess.PIPE,
                               text=True, env=env)
    first = process.stdout.readline().split()
    if saved:
      # The newest complete one: the last reported, or one whose state file update beat the kill.
      assert first[0] == "restored" and saved <= int(first[1]) <= saved + 1, first
      first = process.stdout.readline().split()
    assert first[0] == "saved", first
    # The first save swept the debris of the previous kill; wait for the next save to start.
    deadline = time.time() + 60
    while not any(n.endswith("_temp") for n in os.listdir(directory)):
      assert time.time() < deadline and process.poll() is None, "no save in progress was seen"
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    killed_during.append(sorted(n for n in os.listdir(directory) if "temp" in n))
    out = first[1:] + process.communicate()[0].split()
    saved = max(int(x) for x in out if x.isdigit())
  assert sum(map(bool, killed_during)) >= 2, f"kills mostly between saves: {killed_during}"
  assert all(len(debris) <= 1 for debris in killed_during), killed_during

  state = tf.train.get_checkpoint_state(directory)
  newest = os.path.join(directory, os.path.basename(state.model_checkpoint_path))
  assert is_complete(newest)
  assert all(is_complete(os.path.join(directory, os.path.basename(p)))
             for p in state.all_model_checkpoint_paths)
  objects = {f"w{i}": tf.Variable(tf.zeros((1024, 4096))) for i in range(4)}
  step = tf.Variable(0, dtype=tf.int64)
  Checkpointer(directory, max_to_keep=2, step=step, **objects).restore()
  assert saved <= int(step.numpy()) <= saved + 1
  for v in objects.values():
    assert np.all(v.numpy() == int(step.numpy()))
