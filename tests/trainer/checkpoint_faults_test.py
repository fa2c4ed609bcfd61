"""Fault injection on a real run's checkpoints: each fault ends in a resumed run whose losses are
bitwise those of an uninterrupted run from the checkpoint it restored (or in a clear error that
changes nothing)."""

import os
import shutil

import pytest
import tensorflow as tf

from file_digest import digest
from toy_task import DelayTask
from tbptt.trainer import Trainer, runtime
from tbptt.trainer.checkpointing import Checkpointer
from tbptt.trainer.errors import ConfigError
from events import read_scalars

STOP, END = 40, 50  # The damaged run stopped at STOP (ckpt-20, -30, -40) and resumes to END.


def _run(model_dir, train_steps, read_only=None):
  runtime.seed_everything(11, deterministic=True)
  trainer = Trainer(task=DelayTask(units=8, dropout=0.2), model_dir=str(model_dir),
                    train_steps=train_steps, steps_per_loop=5, summary_interval=1,
                    checkpoint_interval=10, eval_interval=10**6, max_checkpoints=3, seed=11,
                    deterministic=True, learning_rate=0.01, clip_norm=1.0,
                    histogram_interval=None, log_interval=10**6)
  if read_only is not None:
    return trainer.restore(read_only=read_only)
  trainer.train()
  return trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted run to END, and a run that stopped at STOP (the template of every fault)."""
  root = tmp_path_factory.mktemp("faults")
  _run(root / "whole", END)
  _run(root / "stopped", STOP)
  return root, read_scalars(str(root / "whole" / "train"), "loss")


def _checkpoints(model_dir):
  return os.path.join(model_dir, "checkpoints")


def _data(model_dir, step):
  return os.path.join(_checkpoints(model_dir), f"ckpt-{step}.data-00000-of-00001")


def _flip(path):
  data = bytearray(open(path, "rb").read())
  for i in range(64):
    data[(len(data) // 3 + i) % len(data)] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _state(model_dir):
  return os.path.join(_checkpoints(model_dir), "checkpoint")


FAULTS = {  # name: (inject, the step of the checkpoint the resumed run must restore)
    "state file garbage": (lambda d: open(_state(d), "w").write("{{ garbage"), STOP),
    "state file empty": (lambda d: open(_state(d), "w").close(), STOP),
    "state file truncated": (lambda d: open(_state(d), "r+").truncate(20), STOP),
    "state file deleted": (lambda d: os.remove(_state(d)), STOP),
    "state file lists a missing checkpoint": (lambda d: open(_state(d), "w").write(
        'model_checkpoint_path: "ckpt-90"\nall_model_checkpoint_paths: "ckpt-90"\n'), STOP),
    "newest shard flipped": (lambda d: _flip(_data(d, STOP)), 30),
    "newest shard truncated": (lambda d: open(_data(d, STOP), "r+b").truncate(100), 30),
    "newest shard deleted": (lambda d: os.remove(_data(d, STOP)), 30),
    "newest index deleted": (lambda d: os.remove(os.path.join(_checkpoints(d),
                                                              f"ckpt-{STOP}.index")), 30),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_fault_resumes_bitwise_from_the_newest_clean_checkpoint(runs, tmp_path, fault, caplog):
  root, whole = runs
  model_dir = tmp_path / "run"
  shutil.copytree(root / "stopped", model_dir)
  inject, restored = FAULTS[fault]
  inject(model_dir)

  before = digest(_checkpoints(model_dir))
  assert _run(model_dir, END, read_only=True) == restored  # eval, sample, export: no change.
  assert digest(_checkpoints(model_dir)) == before

  caplog.clear()
  trainer = _run(model_dir, END)
  assert trainer.step == END
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING" and r.name.startswith("tbptt")]
  assert len(warnings) == 1, warnings
  resumed = read_scalars(str(model_dir / "train"), "loss")
  after = range(restored + 1, END + 1)
  assert {s: resumed[s] for s in after} == {s: whole[s] for s in after}
  corrupt = os.path.join(_checkpoints(model_dir), "corrupt")
  if restored < STOP:
    assert f"ckpt-{STOP}" in warnings[0] and "is damaged" in warnings[0]
    moved = os.listdir(corrupt)
    assert moved and all(name.startswith(f"ckpt-{STOP}.") for name in moved)
  else:
    assert "rebuilt it from the checkpoints on disk that restore cleanly" in warnings[0]
    assert not os.path.exists(corrupt)


def test_when_every_checkpoint_is_damaged_nothing_changes(runs, tmp_path):
  root, _ = runs
  model_dir = tmp_path / "run"
  shutil.copytree(root / "stopped", model_dir)
  for step in (20, 30, 40):
    _flip(_data(model_dir, step))
  before = digest(model_dir)
  with pytest.raises(ConfigError, match=r"no checkpoint in .*/checkpoints restores cleanly "
                     r"\(ckpt-20 \(checksum mismatch\), ckpt-30 \(checksum mismatch\), ckpt-40 "):
    _run(model_dir, END)
  assert digest(model_dir) == before


def test_a_damaged_best_copy_is_skipped_and_its_state_file_replaced(tmp_path, caplog):
  directory = str(tmp_path / "checkpoints")
  checkpoints = Checkpointer(directory, max_to_keep=2, value=tf.Variable(tf.zeros([64])))
  best = checkpoints.save_best(3)
  assert checkpoints.best == best
  _flip(best + ".data-00000-of-00001")
  assert checkpoints.best is None
  assert any("best/ckpt-3 is damaged (checksum mismatch); skipping it" in r.getMessage()
             for r in caplog.records)
  open(os.path.join(directory, "best", "checkpoint"), "w").close()  # An empty state file.
  again = Checkpointer(directory, max_to_keep=2, value=tf.Variable(tf.ones([64])))
  assert again.save_best(4).endswith("best/ckpt-4") and again.best.endswith("best/ckpt-4")


def test_another_model_is_named_as_a_mismatch_not_as_damage(runs, tmp_path):
  root, _ = runs
  before = digest(root / "stopped")
  other = Trainer(task=DelayTask(units=12), model_dir=str(root / "stopped"), train_steps=END,
                  histogram_interval=None, log_interval=10**6)
  with pytest.raises(ConfigError) as info:
    other.train()
  message = str(info.value)
  assert message.startswith(f"checkpoint {root}/stopped/checkpoints/ckpt-40 does not fit the "
                            "model: variable ")
  assert "in the checkpoint and (" in message and "in the model" in message
  assert "function_node" not in message and "\n" not in message
  assert digest(root / "stopped") == before
