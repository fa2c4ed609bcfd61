"""Checkpoint files, retention, the best checkpoint, misfits and interrupted saves."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management

from trainer.checkpointing import Checkpointer
from trainer.errors import ConfigError


def make(directory, shape=(3,), max_to_keep=2, extra=False):
  objects = {"w": tf.Variable(tf.zeros(shape)), "step": tf.Variable(0, dtype=tf.int64)}
  if extra:
    objects["b"] = tf.Variable(1.0)
  return objects, Checkpointer(str(directory), max_to_keep=max_to_keep, **objects)


def digest(directory):
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        path = os.path.relpath(os.path.join(root, name), directory)
        files[path] = hashlib.sha256(f.read()).hexdigest()
  return files


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
