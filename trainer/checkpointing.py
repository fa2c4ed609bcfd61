"""Checkpoints in model_dir/checkpoints (`ckpt-<step>.*`, `checkpoint`), the best one in .../best.

Crash safety comes from TensorFlow's write order: `Checkpoint.write` writes the data shards and the
`.index` into a temporary directory and moves them into place, and only then does
`CheckpointManager` rewrite the `checkpoint` state file (itself atomically). Restores read that
state file, never a glob of `ckpt-*`, so a save that was cut short is never restored: the previous
checkpoint is.
"""

import os

import tensorflow as tf

from trainer.errors import ConfigError

CHECKPOINT_NAME = "ckpt"


def _first_line(error: BaseException) -> str:
  text = str(error).strip() or type(error).__name__
  return " ".join(text.split())[:400]


class Checkpointer:
  """Saves and restores a fixed set of trackables (model, optimizer, step, carried state, ...).

  Args:
    directory: model_dir/checkpoints.
    max_to_keep: Newest checkpoints kept (older ones are deleted by the manager).
    **objects: Trackables to save, by key (`model=`, `optimizer=`, `step=`, ...).
  """

  def __init__(self, directory: str, *, max_to_keep: int, **objects):
    self.directory = directory
    self._checkpoint = tf.train.Checkpoint(**objects)
    self._manager = tf.train.CheckpointManager(self._checkpoint, directory, max_to_keep=max_to_keep,
                                               checkpoint_name=CHECKPOINT_NAME)
    self._best = tf.train.CheckpointManager(self._checkpoint, os.path.join(directory, "best"),
                                            max_to_keep=1, checkpoint_name=CHECKPOINT_NAME)

  @property
  def latest(self) -> str | None:
    """Path prefix of the newest complete checkpoint (None if there is none)."""
    return tf.train.latest_checkpoint(self.directory)

  @property
  def best(self) -> str | None:
    """Path prefix of the best-by-eval-loss checkpoint (None if there is none)."""
    return tf.train.latest_checkpoint(os.path.join(self.directory, "best"))

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
    """Writes `ckpt-<step>` and makes it the newest checkpoint."""
    return self._manager.save(checkpoint_number=step)

  def save_best(self, step: int) -> str:
    """Writes `best/ckpt-<step>`, replacing the previous best."""
    return self._best.save(checkpoint_number=step)
