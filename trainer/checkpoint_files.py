"""The files of model_dir/checkpoints: which checkpoints are whole, and dropping them crash-safely.

A checkpoint `ckpt-<step>` is whole when its `.index` and every `.data-i-of-n` shard are there. The
`checkpoint` state file lists the committed ones; `drop` takes checkpoints out of that list (one
atomic rewrite) before it deletes their files, so whenever the process is killed the state file
lists only checkpoints whose files are whole. Each question reads a folder's listing once, however
many checkpoints it asks about (a glob per checkpoint costs milliseconds each on a busy disk).
"""

import contextlib
import glob
import logging
import os
import re

import tensorflow as tf

from tbptt.trainer import checkpoint_recovery

CHECKPOINT_NAME = "ckpt"
_SHARD = re.compile(r"\.data-(\d+)-of-(\d+)$")


def _whole(name: str, names: set[str]) -> bool:
  """Whether checkpoint `name` (a file name prefix) has its `.index` and every shard in `names`."""
  if name + ".index" not in names:
    return False
  shards = {}
  start = name + ".data-"
  for other in names:
    if other.startswith(start) and "-of-" in other[len(start):]:
      match = _SHARD.search(other)
      if match:
        shards.setdefault(int(match[2]), set()).add(int(match[1]))
  return any(found == set(range(total)) for total, found in shards.items())


def _names(folder: str) -> set[str]:
  try:
    return set(tf.io.gfile.listdir(folder))
  except tf.errors.NotFoundError:
    return set()


def complete(prefixes: list[str]) -> list[str]:
  """The path prefixes of `prefixes` that are whole checkpoints, in their order."""
  listings = {}
  kept = []
  for prefix in prefixes:
    folder, name = os.path.split(prefix)
    if folder not in listings:
      listings[folder] = _names(folder)
    if _whole(name, listings[folder]):
      kept.append(prefix)
  return kept


def is_complete(prefix: str) -> bool:
  """Whether checkpoint `prefix` has its `.index` and every `.data-i-of-n` shard."""
  return bool(complete([prefix]))


def listed(directory: str) -> list[str]:
  """Path prefixes of the complete checkpoints `directory`'s state file lists, oldest first (none
  if it is missing or unreadable: `Checkpointer.choose` rebuilds it before anything is saved)."""
  return complete(checkpoint_recovery.committed(directory) or [])


def drop(directory: str, prefixes: list[str]) -> None:
  """Removes checkpoints from `directory`'s state file (one atomic rewrite), then their files.

  Whenever the process is killed, the state file lists only checkpoints whose files are whole.
  """
  # Absolute: given a relative directory, TensorFlow rewrites relative names as relative to the
  # current directory's view of it ("../../../ckpt-500" for runs/demo/checkpoints).
  directory = os.path.abspath(directory)
  prefixes = [os.path.abspath(p) for p in prefixes]
  state = tf.train.get_checkpoint_state(directory)
  paths = list(state.all_model_checkpoint_paths) if state is not None else []
  stamps = list(state.all_model_checkpoint_timestamps) if state is not None else []
  if len(stamps) != len(paths):
    stamps = [None] * len(paths)
  kept = [(_absolute(directory, p), t) for p, t in zip(paths, stamps)]
  whole = set(complete([p for p, _ in kept if p not in prefixes]))
  kept = [(p, t) for p, t in kept if p in whole]
  if kept:
    # With their timestamps: a manager only manages (and lists) checkpoints that have one newer
    # than the last preserved timestamp.
    # Relative names, as the manager writes them, so model_dir can be moved.
    timestamps = [t for _, t in kept]
    names = [os.path.relpath(p, directory) for p, _ in kept]
    # Deprecated in favour of CheckpointManager, which cannot drop a checkpoint from its list
    # before deleting the files: its warning would only be noise on the console.
    with quiet_tensorflow(logging.ERROR):
      tf.compat.v1.train.update_checkpoint_state(
          directory, names[-1], all_model_checkpoint_paths=names,
          all_model_checkpoint_timestamps=None if None in timestamps else timestamps,
          last_preserved_timestamp=state.last_preserved_timestamp)
  else:
    state_file = os.path.join(directory, "checkpoint")
    if tf.io.gfile.exists(state_file):
      tf.io.gfile.remove(state_file)
  for prefix in prefixes:
    for path in tf.io.gfile.glob(glob.escape(prefix) + ".*"):
      tf.io.gfile.remove(path)


def sweep_debris(directories) -> None:
  """Deletes the `ckpt-<step>_temp/` directories of saves that were cut short in `directories`."""
  for directory in directories:
    pattern = os.path.join(glob.escape(directory), f"{CHECKPOINT_NAME}-*_temp")
    for path in tf.io.gfile.glob(pattern):
      if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)


@contextlib.contextmanager
def quiet_tensorflow(minimum: int = logging.WARNING):
  """TensorFlow logs at INFO on every save (e.g. 'Sharding callback duration', through absl's
  logger): keep what is below `minimum` out of the console unless the `tbptt` logger is at DEBUG."""
  loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
  levels = [logger.level for logger in loggers]
  if not logging.getLogger("tbptt").isEnabledFor(logging.DEBUG):
    for logger, level in zip(loggers, levels):
      logger.setLevel(max(level, minimum))
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def _absolute(directory: str, path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(directory, path)
