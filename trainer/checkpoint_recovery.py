"""Which checkpoint to restore when storage has damaged some: the rules, as pure decisions.

A readable `checkpoint` state file is the commit record: it lists the committed checkpoints, and an
unlisted checkpoint is a save cut short, never restored. A state file that is unreadable, empty,
missing, or lists only checkpoints whose files are gone is rebuilt from the checkpoints on disk that
restore cleanly (index and every shard present, every checksum good). A committed checkpoint that
fails to read with data loss (a checksum mismatch, a truncated or missing shard, an unreadable
index) is skipped for the next older one; a caller that may change the folder moves it to
`corrupt/` first (never deletes it). A run never starts from step 0 while a checkpoint that
restores cleanly exists: when checkpoint files exist and none restores, `choose` raises.

Every worker of a multi-worker run applies the same rule to the same shared folder, so all choose
the same checkpoint; only the chief changes the folder.
"""

import dataclasses
import glob
import os
import re

import tensorflow as tf

from tbptt.trainer.errors import ConfigError

STATE_FILE = "checkpoint"
CORRUPT_DIR = "corrupt"
_STEP = re.compile(r"-(\d+)$")
_CAUSES = (("Checksum does not match", "checksum mismatch"), ("Read less bytes", "truncated"),
           ("too short", "truncated"), ("corrupted", "corrupted"),
           ("No such file", "missing file"), ("Failed to find any matching files", "missing index"))


def step_of(prefix: str) -> int:
  """The step of `.../ckpt-<step>`."""
  match = _STEP.search(prefix)
  return int(match[1]) if match else -1


def damage(prefix: str) -> str | None:
  """Why checkpoint `prefix` cannot be restored whole, or None if every value reads back cleanly.

  Reads the index and every value (each read checks the value's checksum), as a restore would.
  """
  try:
    reader = tf.train.load_checkpoint(prefix)
    for key in reader.get_variable_to_shape_map():
      reader.get_tensor(key)
  except (tf.errors.OpError, IndexError, ValueError, RuntimeError, OSError) as e:
    text = str(e)
    for needle, cause in _CAUSES:
      if needle in text:
        return cause
    return " ".join(text.split())[:200] or type(e).__name__
  return None


def committed(directory: str) -> list[str] | None:
  """Path prefixes the state file lists, oldest first; None if it is missing or unreadable."""
  path = os.path.join(directory, STATE_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    state = tf.train.get_checkpoint_state(directory)
  except (ValueError, tf.errors.OpError):  # An empty state file.
    return None
  if state is None:  # Unparsable.
    return None
  paths = list(state.all_model_checkpoint_paths)
  if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
    paths.append(state.model_checkpoint_path)
  return paths  # TensorFlow has already joined relative names to `directory`.


def on_disk(directory: str) -> list[str]:
  """Prefixes of every `ckpt-<step>` with an index or data file in `directory`, by step."""
  prefixes = set()
  for path in tf.io.gfile.glob(os.path.join(glob.escape(directory), "ckpt-*")):
    match = re.match(r"(.*/ckpt-\d+)\.(index|data-\d+-of-\d+)$", path)
    if match:
      prefixes.add(match[1])
  return sorted(prefixes, key=step_of)


@dataclasses.dataclass
class Choice:
  """What `choose` decided.

  Attributes:
    path: The checkpoint to restore (None: there is none; start from step 0).
    committed: The checkpoints the state file should list (oldest first), when it must be
      rewritten (`rewrite_state`).
    rewrite_state: The state file was damaged, or lists a checkpoint found corrupt.
    corrupt: (prefix, cause) of every committed checkpoint newer than `path` that is damaged.
    warnings: One line each, for the log.
  """
  path: str | None
  committed: list
  rewrite_state: bool = False
  corrupt: list = dataclasses.field(default_factory=list)
  warnings: list = dataclasses.field(default_factory=list)


def _exists(prefix: str) -> bool:
  return bool(tf.io.gfile.glob(glob.escape(prefix) + ".*"))


def choose(directory: str) -> Choice:
  """Applies the rules of the module docstring to `directory` (changing nothing).

  Raises:
    ConfigError: checkpoint files exist in `directory` and none restores cleanly.
  """
  listed = committed(directory)
  state_file = os.path.join(directory, STATE_FILE)
  warnings = []
  if listed is not None and not any(_exists(p) for p in listed):
    if listed or on_disk(directory):
      listed = None  # It lists only checkpoints that are gone: as good as no record.
  if listed is None:
    candidates = on_disk(directory)
    if not candidates:
      return Choice(None, [])
    clean = [p for p in candidates if damage(p) is None]
    why = ("is missing" if not tf.io.gfile.exists(state_file) else "is unreadable or lists no "
           "checkpoint that exists")
    if not clean:
      raise _none_restores(directory, candidates)
    warnings.append(f"{state_file} {why}; rebuilt it from the checkpoints on disk that restore "
                    f"cleanly: {', '.join(os.path.basename(p) for p in clean)}")
    return Choice(clean[-1], clean, rewrite_state=True, warnings=warnings)
  corrupt = []
  for prefix in reversed(listed):
    cause = damage(prefix)
    if cause is None:
      kept = [p for p in listed if p not in {c for c, _ in corrupt}]
      warnings += [f"checkpoint {c} is damaged ({why}); using {os.path.basename(prefix)}"
                   for c, why in corrupt]
      return Choice(prefix, kept, rewrite_state=bool(corrupt), corrupt=corrupt,
                    warnings=warnings)
    corrupt.append((prefix, cause))
  if listed or on_disk(directory):
    raise _none_restores(directory, listed or on_disk(directory))
  return Choice(None, [])


def _none_restores(directory: str, candidates: list) -> ConfigError:
  causes = ", ".join(f"{os.path.basename(p)} ({damage(p)})" for p in candidates[-3:])
  return ConfigError(f"no checkpoint in {directory} restores cleanly ({causes}); restore them "
                     "from a backup, or move them away to train from step 0")


def move_to_corrupt(directory: str, prefix: str) -> str:
  """Moves every file of checkpoint `prefix` into `directory/corrupt/`; returns that folder."""
  target = os.path.join(directory, CORRUPT_DIR)
  tf.io.gfile.makedirs(target)
  for path in tf.io.gfile.glob(glob.escape(prefix) + ".*"):
    tf.io.gfile.rename(path, os.path.join(target, os.path.basename(path)), overwrite=True)
  return target


def write_state(directory: str, prefixes: list) -> None:
  """Rewrites the state file to list `prefixes` (oldest first), atomically (TensorFlow writes a
  temporary file and renames it), with relative paths and the index files' times as the save
  times, so that a `tf.train.CheckpointManager` manages (and rotates) them as its own."""
  if not prefixes:
    return
  directory = os.path.abspath(directory)  # Else TensorFlow rewrites the names (see `drop`).
  names = [os.path.basename(p) for p in prefixes]
  stamps = [tf.io.gfile.stat(p + ".index").mtime_nsec / 1e9 for p in prefixes]
  tf.compat.v1.train.update_checkpoint_state(
      directory, names[-1], all_model_checkpoint_paths=names,
      all_model_checkpoint_timestamps=stamps, last_preserved_timestamp=min(stamps) - 1)


def apply(directory: str, choice: Choice) -> None:
  """Carries out a training run's part of `choice`: corrupt checkpoints to `corrupt/`, then the
  state file rewritten (so the state file never lists a file that was moved)."""
  if choice.rewrite_state:
    write_state(directory, choice.committed)
  for prefix, _ in choice.corrupt:
    move_to_corrupt(directory, prefix)
