"""Checkpoints in model_dir/checkpoints (`ckpt-<step>.*`, `checkpoint`), the best one in .../best.

`tf.train.CheckpointManager` writes, numbers and records the checkpoints. Crash safety comes from
TensorFlow's write order: `Checkpoint.write` writes the data shards and the
`.index` into a temporary directory (`ckpt-<step>_temp/`) and moves them into place, and only then
does `CheckpointManager` rewrite the `checkpoint` state file (itself atomically: a temporary file
renamed over it). Restores read that state file, never a glob of `ckpt-*`, so a save that was cut
short (SIGKILL, a second signal, a full disk) is never restored: the previous checkpoint is (its
`_temp/` debris is deleted by the next run's first save). What the manager does not give: files are
deleted only after the state file stopped listing them, so the state file never lists an
incomplete checkpoint (the manager's own `max_to_keep` deletes first and rewrites the list after):
old checkpoints beyond `max_to_keep`, and a listed step that is saved again (see `save`). `latest`
also skips a listed checkpoint whose files are not all there (e.g. deleted by hand). The work on
the files themselves (which checkpoints are whole, dropping them) is `checkpoint_files`'.

Values that live outside variables (the carried per-replica state) are copied in by `before_save`
and back out by `after_restore`. TensorFlow's own log lines about each save and restore are
silenced unless the `tbptt` logger is at DEBUG.

Under multi-worker training every worker must save (the values are gathered with collectives), but
only the chief's copy is kept: the others write into `write_directory`, which is deleted after each
save (as TensorFlow's multi-worker guide prescribes). Every worker restores from the chief's
directory.
"""

import logging
import os
import re
from typing import Callable

import tensorflow as tf

from tbptt.trainer import checkpoint_recovery
from tbptt.trainer.checkpoint_files import (CHECKPOINT_NAME, complete, drop, is_complete, listed,
                                            quiet_tensorflow, sweep_debris)
from tbptt.trainer.errors import ConfigError

__all__ = ["CHECKPOINT_NAME", "Checkpointer", "complete", "is_complete"]
_log = logging.getLogger("tbptt.trainer")


def _first_line(error: BaseException) -> str:
  text = str(error).strip() or type(error).__name__
  return " ".join(text.split())[:400]


_SHAPES = re.compile(r"incompatible tensor with shape (\(.*?\)) when attempting to restore "
                     r"variable with shape (\(.*?\)) and name ([^ ]+?)\.?$", re.M)
_UNRESOLVED = re.compile(r"Unresolved object in checkpoint \(root\)\.(\S+?):")
_UNMATCHED = re.compile(r"checkpoint_key: \"([^\"]+)\"")


def _mismatch(error: BaseException) -> str:
  """What differs between a checkpoint and the model, in one line: the variable and both shapes,
  or the value that found no object; TensorFlow's own text (first line) otherwise."""
  text = str(error)
  match = _SHAPES.search(text)
  if match:
    return (f"variable {match[3].removesuffix(':0')} has shape {match[1]} in the checkpoint and "
            f"{match[2]} in the model")
  match = _UNRESOLVED.search(text)
  if match:
    key = _UNMATCHED.search(text)
    return (f"the checkpoint holds {match[1]}"
            + (f" ({key[1].split('/.ATTRIBUTES')[0]})" if key else "")
            + ", which the model does not have")
  return _first_line(re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text))


class Checkpointer:
  """Saves and restores a fixed set of trackables (model, optimizer, step, carried state, ...).

  Args:
    directory: model_dir/checkpoints: where checkpoints are read from (and written, on the chief).
    max_to_keep: Newest checkpoints kept (older ones are deleted after the state file dropped them).
    write_directory: Non-chief workers only: a scratch directory each save writes into and then
      deletes. None: save into `directory`.
    before_save: Called before every write (copies values into the saved variables).
    after_restore: Called after every restore (copies restored values out again).
    **objects: Trackables to save, by key (`model=`, `optimizer=`, `step=`, ...).
  """

  def __init__(self, directory: str, *, max_to_keep: int, write_directory: str | None = None,
               before_save: Callable[[], None] | None = None,
               after_restore: Callable[[], None] | None = None, **objects):
    self.directory = directory
    self.write_directory = write_directory
    self._before_save = before_save or (lambda: None)
    self._after_restore = after_restore or (lambda: None)
    self._keep = {directory: max_to_keep, os.path.join(directory, "best"): 1}
    self.objects = dict(objects)  # What is saved, by checkpoint key.
    self._checkpoint = tf.train.Checkpoint(**objects)
    # Made on first save, after `choose` has repaired a damaged state file (a manager reads it).
    self._managers = {}
    self._swept = False

  def _manager(self, directory):
    if directory not in self._managers:
      try:
        self._managers[directory] = self._new_manager(directory)
      except ValueError:  # An empty state file; only best/'s can be left by then: it is rebuilt.
        tf.io.gfile.remove(os.path.join(directory, checkpoint_recovery.STATE_FILE))
        self._managers[directory] = self._new_manager(directory)
    return self._managers[directory]

  def _new_manager(self, directory):
    # max_to_keep=None: the manager deletes nothing; `_drop` does, after the state file forgot them
    # (the manager's own sweep deletes files the state file still lists).
    return tf.train.CheckpointManager(self._checkpoint, directory, max_to_keep=None,
                                      checkpoint_name=CHECKPOINT_NAME)

  @property
  def checkpoints(self) -> list[str]:
    """Path prefixes of the complete checkpoints the state file lists, oldest first."""
    return listed(self.directory)

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
    """Path prefix of the best-by-eval-loss checkpoint (None if there is none, or if it is damaged:
    a warning names it)."""
    path = tf.train.latest_checkpoint(os.path.join(self.directory, "best"))
    if path is None or not is_complete(path):
      return None
    cause = checkpoint_recovery.damage(path)
    if cause is not None:
      _log.warning("checkpoint %s is damaged (%s); skipping it", path, cause)
      return None
    return path

  def read(self, path: str, key: str):
    """The value saved under `key` (e.g. 'step') in checkpoint `path`, as NumPy."""
    return tf.train.load_variable(path, f"{key}/.ATTRIBUTES/VARIABLE_VALUE")

  def choose(self, read_only: bool = False) -> str | None:
    """The checkpoint to restore by the rules of `checkpoint_recovery` (a damaged state file is
    rebuilt, a damaged newest checkpoint is skipped), with one warning line per repair.

    Args:
      read_only: Change nothing in `directory` (eval, sample, export; every worker but the chief).
        Otherwise damaged checkpoints are moved to `corrupt/` and the state file is rewritten.

    Raises:
      ConfigError: checkpoint files exist and none restores cleanly (nothing is changed).
    """
    choice = checkpoint_recovery.choose(self.directory)
    for line in choice.warnings:
      _log.warning(line)
    if not read_only and self.write_directory is None and (choice.rewrite_state or choice.corrupt):
      with quiet_tensorflow(logging.ERROR):  # update_checkpoint_state's deprecation notice.
        checkpoint_recovery.apply(self.directory, choice)
      self._managers.pop(self.directory, None)  # It caches what it manages.
    return choice.path

  def restore(self, path: str | None = None, read_only: bool = False) -> str | None:
    """Restores `path` (default: `choose(read_only)`) into the objects; returns the path or None.

    Every saved value must find its object and every object its value, with the same shape: anything
    else means the checkpoint was written by a different model or config.

    Raises:
      ConfigError: The checkpoint does not fit (names the checkpoint and what differs), or no
        checkpoint restores cleanly. Its files are left as they are.
    """
    path = path or self.choose(read_only)
    if path is None:
      return None
    try:
      with quiet_tensorflow():
        status = self._checkpoint.restore(path)
        status.assert_consumed()
    except (AssertionError, ValueError, TypeError, tf.errors.OpError) as e:
      raise ConfigError(f"checkpoint {path} does not fit the model: {_mismatch(e)}; use a new "
                        "--model_dir or the config this checkpoint was trained with") from None
    self._after_restore()
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
    return self._save(self.directory, step)

  def save_best(self, step: int) -> str:
    """Writes `best/ckpt-<step>`, replacing the previous best."""
    if self.write_directory is not None:
      return self._save_scratch(step, os.path.join(self.write_directory, "best"))
    return self._save(os.path.join(self.directory, "best"), step)

  def _save(self, directory: str, step: int) -> str:
    self._before_save()
    self._sweep_debris()
    prefix = os.path.join(directory, f"{CHECKPOINT_NAME}-{step}")
    # A listed ckpt-<step> is a complete one, so it has its index: the index alone tells.
    if tf.io.gfile.exists(prefix + ".index"):
      self._drop(directory, [prefix])
    with quiet_tensorflow():
      path = self._manager(directory).save(checkpoint_number=step)
    _log.debug("Saved %s.", path)
    excess = listed(directory)[:-self._keep[directory]]
    if excess:
      self._drop(directory, excess)
    return path

  def _sweep_debris(self) -> None:
    """Before this process's first save: deletes the `ckpt-<step>_temp/` directories of saves that
    were cut short (never restored, but each can be as large as a checkpoint). Not earlier: a run
    that fails to start must leave model_dir as it found it."""
    if self._swept:
      return
    self._swept = True
    sweep_debris([self.directory, os.path.join(self.directory, "best")])

  def _save_scratch(self, step: int, directory: str) -> str:
    """A non-chief worker's save: the same values, written and then thrown away."""
    self._before_save()
    with quiet_tensorflow():
      path = self._checkpoint.write(os.path.join(directory, f"{CHECKPOINT_NAME}-{step}"))
    if tf.io.gfile.exists(self.write_directory):
      tf.io.gfile.rmtree(self.write_directory)
    return path

  def _drop(self, directory: str, prefixes: list[str]) -> None:
    """Drops checkpoints from `directory`'s state file, then deletes their files (see `drop`)."""
    drop(directory, prefixes)
    self._managers.pop(directory, None)  # It caches what it manages.
