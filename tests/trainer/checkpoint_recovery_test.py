"""Tests for trainer/checkpoint_recovery.py: every fault of the state file and of a checkpoint."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tbptt.trainer import checkpoint_recovery as recovery
from tbptt.trainer.errors import ConfigError

STEPS = (40, 50, 60)


@pytest.fixture
def folder(tmp_path):
  """Three committed checkpoints; checkpoint `ckpt-<s>` holds the value s everywhere."""
  value = tf.Variable(tf.zeros([256]))
  checkpoint = tf.train.Checkpoint(value=value)
  manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=5)
  for step in STEPS:
    value.assign(tf.fill([256], float(step)))
    manager.save(checkpoint_number=step)
  return str(tmp_path)


def _prefix(folder, step):
  return os.path.join(folder, f"ckpt-{step}")


def _flip(path, count=64, offset=100):
  data = bytearray(open(path, "rb").read())
  for i in range(offset, offset + count):
    data[i % len(data)] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _data(folder, step):
  return _prefix(folder, step) + ".data-00000-of-00001"


def _listing(folder):
  return {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}


def test_a_healthy_folder_restores_the_newest(folder):
  choice = recovery.choose(folder)
  assert choice.path == _prefix(folder, 60) and not choice.rewrite_state and not choice.warnings


STATE_FAULTS = {
    "garbage": lambda path: open(path, "w").write("garbage !!! {{ not a proto"),
    "empty": lambda path: open(path, "w").close(),
    "truncated": lambda path: open(path, "r+").truncate(25),
    "deleted": os.remove,
    "listing a missing checkpoint": lambda path: open(path, "w").write(
        'model_checkpoint_path: "ckpt-70"\nall_model_checkpoint_paths: "ckpt-70"\n'),
}


@pytest.mark.parametrize("fault", sorted(STATE_FAULTS))
def test_a_damaged_state_file_is_rebuilt_from_the_clean_checkpoints(folder, fault):
  STATE_FAULTS[fault](os.path.join(folder, "checkpoint"))
  _flip(_data(folder, 50))  # Not a candidate for the rebuilt list.
  before = _listing(folder)
  choice = recovery.choose(folder)
  assert _listing(folder) == before  # Choosing changes nothing.
  assert choice.path == _prefix(folder, 60) and choice.rewrite_state
  assert choice.committed == [_prefix(folder, 40), _prefix(folder, 60)]
  assert len(choice.warnings) == 1 and "rebuilt it from the checkpoints on disk that restore " \
      "cleanly: ckpt-40, ckpt-60" in choice.warnings[0]
  recovery.apply(folder, choice)
  assert tf.train.latest_checkpoint(folder) == _prefix(folder, 60)
  state = tf.train.get_checkpoint_state(folder)
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-40", "ckpt-60"]
  again = recovery.choose(folder)
  assert again.path == _prefix(folder, 60) and not again.rewrite_state


def test_the_rebuilt_state_is_managed_by_a_checkpoint_manager(folder):
  os.remove(os.path.join(folder, "checkpoint"))
  recovery.apply(folder, recovery.choose(folder))
  checkpoint = tf.train.Checkpoint(value=tf.Variable(tf.zeros([256])))
  manager = tf.train.CheckpointManager(checkpoint, folder, max_to_keep=2)
  manager.save(checkpoint_number=70)
  assert [os.path.basename(p) for p in manager.checkpoints] == ["ckpt-60", "ckpt-70"]


DATA_FAULTS = {
    "flipped bytes": lambda folder: _flip(_data(folder, 60)),
    "truncated shard": lambda folder: open(_data(folder, 60), "r+b").truncate(50),
    "deleted shard": lambda folder: os.remove(_data(folder, 60)),
    "deleted index": lambda folder: os.remove(_prefix(folder, 60) + ".index"),
    "garbage index": lambda folder: open(_prefix(folder, 60) + ".index", "wb").write(b"junk"),
}


@pytest.mark.parametrize("fault", sorted(DATA_FAULTS))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(folder, fault):
  DATA_FAULTS[fault](folder)
  choice = recovery.choose(folder)
  assert choice.path == _prefix(folder, 50)
  assert [p for p, _ in choice.corrupt] == [_prefix(folder, 60)]
  assert choice.warnings[0].startswith(f"checkpoint {_prefix(folder, 60)} is damaged (")
  assert choice.warnings[0].endswith("); using ckpt-50")
  recovery.apply(folder, choice)
  assert tf.train.latest_checkpoint(folder) == _prefix(folder, 50)
  moved = os.listdir(os.path.join(folder, "corrupt"))
  assert moved and all(name.startswith("ckpt-60.") for name in moved)
  assert not [n for n in os.listdir(folder) if n.startswith("ckpt-60.")]
  restored = tf.Variable(tf.zeros([256]))
  tf.train.Checkpoint(value=restored).restore(choice.path).assert_consumed()
  np.testing.assert_array_equal(restored, np.full([256], 50.0))


def test_the_causes_are_named(folder):
  _flip(_data(folder, 60))
  open(_data(folder, 50), "r+b").truncate(50)
  os.remove(_prefix(folder, 40) + ".index")
  assert recovery.damage(_prefix(folder, 60)) == "checksum mismatch"
  assert recovery.damage(_prefix(folder, 50)) == "truncated"
  assert recovery.damage(_prefix(folder, 40)) == "missing index"


def test_when_none_restores_it_is_an_error_and_nothing_changes(folder):
  for step in STEPS:
    _flip(_data(folder, step))
  before = _listing(folder)
  with pytest.raises(ConfigError, match=r"no checkpoint in .* restores cleanly \(ckpt-40 "
                     r"\(checksum mismatch\), .*\); restore them from a backup, or move them"):
    recovery.choose(folder)
  os.remove(os.path.join(folder, "checkpoint"))
  with pytest.raises(ConfigError, match="no checkpoint in .* restores cleanly"):
    recovery.choose(folder)
  del before["checkpoint"]
  assert _listing(folder) == before


def test_an_empty_folder_starts_from_scratch(tmp_path):
  assert recovery.choose(str(tmp_path)).path is None
  assert recovery.choose(str(tmp_path / "missing")).path is None


def test_an_unlisted_checkpoint_is_a_save_cut_short(folder):
  state = os.path.join(folder, "checkpoint")
  text = open(state).read().replace('"ckpt-60"', '"ckpt-50"')
  open(state, "w").write(text)  # As if the save of ckpt-60 was cut before its commit.
  assert recovery.choose(folder).path == _prefix(folder, 50)
