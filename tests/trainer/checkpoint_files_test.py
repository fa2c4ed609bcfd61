"""checkpoint_files: which checkpoints are whole, from one listing of their folder."""

import os

from tbptt.trainer.checkpoint_files import complete, is_complete


def touch(directory, *names):
  for name in names:
    with open(os.path.join(directory, name), "w") as f:
      f.write("x")


def test_a_checkpoint_is_whole_with_its_index_and_every_shard(tmp_path):
  d = str(tmp_path)
  touch(d, "ckpt-1.index", "ckpt-1.data-00000-of-00001",
        "ckpt-2.index", "ckpt-2.data-00000-of-00002",  # A shard missing.
        "ckpt-3.data-00000-of-00001",  # No index.
        "ckpt-4.index", "ckpt-4.data-00000-of-00002", "ckpt-4.data-00001-of-00002",
        "ckpt-40.index", "ckpt-40.data-00000-of-00001")
  prefixes = [os.path.join(d, f"ckpt-{n}") for n in (4, 1, 2, 3, 40, 5)]
  assert complete(prefixes) == [prefixes[0], prefixes[1], prefixes[4]]
  assert is_complete(os.path.join(d, "ckpt-4")) and not is_complete(os.path.join(d, "ckpt-2"))


def test_a_missing_folder_holds_no_checkpoint(tmp_path):
  assert complete([str(tmp_path / "gone" / "ckpt-1")]) == []


def test_dropping_from_a_relative_folder_keeps_the_state_file_readable(tmp_path, monkeypatch):
  """Given a relative folder, TensorFlow would rewrite the listed names relative to the current
  directory's view of it ("../../../ckpt-1"); the state file must still name the checkpoints."""
  import tensorflow as tf

  from tbptt.trainer.checkpoint_files import drop
  from tbptt.trainer.checkpoint_recovery import choose, committed, write_state
  monkeypatch.chdir(tmp_path)
  directory = os.path.join("runs", "demo", "checkpoints")
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), directory, 5)
  for step in (1, 2, 3):
    manager.save(checkpoint_number=step)
  drop(directory, [os.path.join(directory, "ckpt-2")])
  state = tf.train.get_checkpoint_state(directory)
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-1", "ckpt-3"]
  assert all(is_complete(p) for p in state.all_model_checkpoint_paths)
  assert is_complete(state.model_checkpoint_path)
  write_state(directory, [os.path.join(directory, "ckpt-3")])
  state = tf.train.get_checkpoint_state(directory)
  assert is_complete(state.model_checkpoint_path)
  assert "../" not in open(os.path.join(directory, "checkpoint")).read()
  assert committed(directory) == [os.path.join(directory, "ckpt-3")]
  choice = choose(directory)
  assert not choice.rewrite_state and not choice.warnings
  assert choice.path == os.path.join(directory, "ckpt-3")
