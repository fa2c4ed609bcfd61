"""Checkpoints in model_dir/checkpoints (`ckpt-<step>.*`, `checkpoint`), the best one in .../best.

Crash safety comes from TensorFlow's write order: `Checkpoint.write` writes the data shards and the
`.index` into a temporary directory (`ckpt-<step>_temp/`) and moves them into place, and only then
does `CheckpointManager` rewrite the `checkpoint` state file (itself atomically: a temporary file
renamed over it). Restores read that state file, never a glob of `ckpt-*`, so a save that was cut
short (SIGKILL, a second signal, a full disk) is never restored: the previous checkpoint is. On top
of that, `latest` skips any listed checkpoint whose files are not all there (deleted by hand, or a
deletion of old checkpoints cut short), and a step is never saved over its own files while the state
file names them (see `save`).

Under multi-worker training every worker must save (the values are gathered with collectives), but
only the chief's copy is kept: the others write into `write_directory`, which is deleted after each
save (as TensorFlow's multi-worker guide prescribes). Every worker restores from the chief's
directory.
"""

import glob
import os
import re

import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management

from trainer.errors import ConfigError

CHECKPOINT_NAME = "ckpt"
_SHARD = re.compile(r"\.data-(\d+)-of-(\d+)$")


def _first_line(error: BaseException) -> str:
  text = str(error).strip() or type(error).__name__
  return " ".join(text.split())[:400]


def is_complete(prefix: str) -> bool:
  """Whether checkpoint `prefix` has its `.index` and every `.data-i-of-n` shard."""
  if not tf.io.gfile.exists(prefix + ".index"):
    return False
  shards = {}
  for path in tf.io.gfile.glob(glob.escape(prefix) + ".data-*-of-*"):
    match = _SHARD.search(path)
    if match:
      shards.setdefault(int(match[2]), set()).add(int(match[1]))
  return any(found == set(range(total)) for total, found in shards.items())


class Checkpointer:
  """Saves and restores a fixed set of trackables (model, optimizer, step, carried state, ...).

  Args:
    directory: model_dir/checkpoints: where checkpoints are read from (and written, on the chief).
    max_to_keep: Newest checkpoints kept (older ones are deleted by the manager).
    write_directory: Non-chief workers only: a scratch directory each save writes into and then
      deletes. None: save into `directory`.
    **objects: Trackables to save, by key (`model=`, `optimizer=`, `step=`, ...).
  """

  def __init__(self, directory: str, *, max_to_keep: int, write_directory: str | None = None,
               **objects):
    self.directory = directory
    self.write_directory = write_directory
    self._max_to_keep = max_to_keep
    self._checkpoint = tf.train.Checkpoint(**objects)
    self._manager = self._new_manager()
    self._best = tf.train.CheckpointManager(self._checkpoint, os.path.join(directory, "best"),
                                            max_to_keep=1, checkpoint_name=CHECKPOINT_NAME)

  def _new_manager(self):
    return tf.train.CheckpointManager(self._checkpoint, self.directory,
                                      max_to_keep=self._max_to_keep,
                                      checkpoint_name=CHECKPOINT_NAME)

  @property
  def checkpoints(self) -> list[str]:
    """Path prefixes of the complete checkpoints the state file lists, oldest first."""
    state = tf.train.get_checkpoint_state(self.directory)
    if state is None:
      return []
    paths = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
      paths.append(state.model_checkpoint_path)
    paths = [p if os.path.isabs(p) else os.path.join(self.directory, p) for p in paths]
    return [p for p in paths if is_complete(p)]

  @property
  def latest(self) -> str | None:
    """Path prefix of the newest complete checkpoint (None if there is none)."""
    newest = tf.train.latest_checkpoint(self.directory)
    if newest is not None and is_complete(newest):
      return newest
    complete = self.checkpoints  # The newest one is damaged: fall back to the newest whole one.
    return complete[-1] if complete else None

  @property
  def best(self) -> str | None:
    """Path prefix of the best-by-eval-loss checkpoint (None if there is none)."""
    path = tf.train.latest_checkpoint(os.path.join(self.directory, "best"))
    return path if path is not None and is_complete(path) else None

  def read(self, path: str, key: str):
    """The value saved under `key` (e.g. 'step') in checkpoint `path`, as NumPy."""
    return tf.train.load_variable(path, f"{key}/.ATTRIBUTES/VARIABLE_VALUE")

  def restore(self, path: str | None = None) -> str | None:
    """Restores `path` (default: the newest checkpoint) into the objects; returns the path or None.

    Every saved value must find its object and every object its value, with the same shape: anything
    else means the checkpoint was written by a different model or config.

    Raises:
      ConfigError: The checkpoint does not fit (names the checkpoint and the first mismatch) or
        cannot be read. Its files are left as they are.
    """
    path = path or self.latest
    if path is None:
      return None
    try:
      status = self._checkpoint.restore(path)
      status.assert_consumed()
    except (AssertionError, ValueError, TypeError, tf.errors.OpError) as e:
      raise ConfigError(f"checkpoint {path} does not fit the model: {_first_line(e)}; use a new "
                        "--model_dir or the config this checkpoint was trained with") from None
    return path

  def save(self, step: int) -> str:
    """Writes `ckpt-<step>` and makes it the newest checkpoint.

    If the state file already lists a `ckpt-<step>` (training went back to an earlier step, e.g. a
    rollback, and reached this one again), it is first dropped from the state file and deleted:
    rewriting its files in place could leave an index and data of different saves under a name the
    state file points at.
    """
    if self.write_directory is not None:
      return self._save_scratch(step, self.write_directory)
    prefix = os.path.join(self.directory, f"{CHECKPOINT_NAME}-{step}")
    if prefix in self._manager.checkpoints or tf.io.gfile.exists(prefix + ".index"):
      self._forget(prefix)
    return self._manager.save(checkpoint_number=step)

  def save_best(self, step: int) -> str:
    """Writes `best/ckpt-<step>`, replacing the previous best."""
    if self.write_directory is not None:
      return self._save_scratch(step, os.path.join(self.write_directory, "best"))
    return self._best.save(checkpoint_number=step)

  def _save_scratch(self, step: int, directory: str) -> str:
    """A non-chief worker's save: the same values, written and then thrown away."""
    path = self._checkpoint.write(os.path.join(directory, f"{CHECKPOINT_NAME}-{step}"))
    if tf.io.gfile.exists(self.write_directory):
      tf.io.gfile.rmtree(self.write_directory)
    return path

  def _forget(self, prefix: str) -> None:
    """Drops checkpoint `prefix` from the state file (atomically), then deletes its files."""
    keep = [p for p in self.checkpoints if p != prefix]
    if keep:
      checkpoint_management.update_checkpoint_state_internal(
          save_dir=self.directory, model_checkpoint_path=keep[-1],
          all_model_checkpoint_paths=keep, save_relative_paths=True)
    else:
      state = os.path.join(self.directory, "checkpoint")
      if tf.io.gfile.exists(state):
        tf.io.gfile.remove(state)
    for path in tf.io.gfile.glob(glob.escape(prefix) + ".*"):
      tf.io.gfile.remove(path)
    self._manager = self._new_manager()  # It caches the list of checkpoints it manages.
