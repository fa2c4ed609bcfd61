"""The gin root: builds a task and a Trainer inside the strategy scope and runs one mode.

    run_experiment.task_fn = @LanguageModelTask      # or @ForecastTask, any tbptt.trainer.task.Task

Modes:
  train            train to Trainer.train_steps (resuming from model_dir), evaluating on the way.
  eval             evaluate the latest checkpoint on valid and test.
  train_and_eval   train, then evaluate the final model on valid and test.
  sample           print text sampled from the latest checkpoint (language models: `sample_text`).
  export           write a streaming SavedModel of the latest checkpoint to model_dir/export.
Evaluation, sampling and export use NT-ASGD's averaged weights once averaging has started
(`Trainer.weight_averaging`).
"""

import contextlib
import json
import os
import re

import gin
import tensorflow as tf
from absl import logging

# Imported for their gin registrations: every configurable a .gin file may name.
from tbptt.experiments import forecasting  # noqa: F401
from tbptt.experiments import language_model  # noqa: F401
from tbptt.experiments import export as export_lib
from tbptt.experiments import run_lock, sampling, storage
from tbptt.layers.lstm import planned_implementations
from tbptt.trainer import Trainer, TrainerConfig
from tbptt.trainer import optimizers  # noqa: F401
from tbptt.trainer.distribute import make_strategy
from tbptt.trainer.errors import ConfigError

MODES = ("train", "eval", "train_and_eval", "sample", "export")
TRAINING_MODES = ("train", "train_and_eval")  # Write checkpoints: one run per model_dir at a time.
WRITING_MODES = TRAINING_MODES + ("eval", "export")  # Write something into model_dir.
EVAL_SPLITS = ("valid", "test")
_CONFIGURABLE = re.compile(r"In call to configurable '([^']+)'")
_UNBOUND_MACRO = "macro() missing 1 required positional argument"
_KERAS_CALL = "Exception encountered when calling"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OOM = re.compile(r"OOM when allocating tensor with shape\s*\[[^\]]*\](?: and type \w+)?")


def build(model_dir: str, task_fn):
  """Builds (strategy, task, trainer); every variable is created inside the strategy's scope.

  The trainer's config (gin: `Trainer.*`) is read once, here; its runtime (seed, determinism,
  precision) is applied after the strategy exists and before the task builds its model, and the
  same config goes to the Trainer.

  Raises:
    ConfigError: the task or Trainer rejects its configuration.
  """
  if task_fn is None:
    raise ConfigError("run_experiment.task_fn is not set; add --gin_file=charlm.gin (or another "
                      "config) or --gin_bindings='run_experiment.task_fn=@LanguageModelTask'")
  with _as_config_errors():
    config = TrainerConfig()
    # A multi-worker strategy must exist before any other op runs (seeding runs ops).
    strategy = make_strategy()
    config.runtime.apply()
  with strategy.scope(), _as_config_errors():
    task = task_fn(model_dir=model_dir)
    trainer = Trainer(task=task, model_dir=model_dir, strategy=strategy, config=config)
  return strategy, task, trainer


@contextlib.contextmanager
def _as_config_errors():
  """Arguments rejected with ValueError (e.g. a layer's `units=0`) are config errors, and so are
  TypeErrors raised in a gin configurable's call (a value of the wrong type, an unbound macro)."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    lines = str(e).splitlines()
    # gin appends "In call to configurable 'X'" lines, innermost first: name the configurable.
    names = [m[1] for m in map(_CONFIGURABLE.search, lines[1:]) if m]
    if isinstance(e, TypeError) and not names:
      raise  # Not raised through gin: a bug, not a configuration problem.
    problem = _problem(lines) or type(e).__name__
    if _UNBOUND_MACRO in problem:  # gin calls a macro without a value: name what uses it.
      names = [name for name in names if name != "macro"]
      problem = "a %MACRO in its bindings has no value; bind it (e.g. --gin_bindings='NAME = 3')"
    prefix = f"{names[0]}: " if names else ""
    raise ConfigError(f"{prefix}{problem}; fix the gin binding") from None


def _problem(lines: list[str]) -> str:
  """The line of an error message that says what is wrong."""
  lines = [_ANSI.sub("", line).strip() for line in lines]
  if lines and lines[0].startswith(_KERAS_CALL):
    # Keras wraps errors raised in call(): its first line only says where, the next one what.
    where = lines[0][len(_KERAS_CALL):].strip().rstrip(".")
    what = next((line for line in lines[1:] if line), "").rstrip(".")
    return f"{what} (in {where})" if what else lines[0]
  return lines[0] if lines else ""


@contextlib.contextmanager
def _out_of_memory_as_config_errors():
  """A model or batch too large for the machine's memory is a configuration error."""
  try:
    yield
  except (tf.errors.ResourceExhaustedError, MemoryError) as e:
    match = _OOM.search(str(e))
    if isinstance(e, tf.errors.ResourceExhaustedError) and match is None:
      raise
    what = match[0] if match else "MemoryError"
    raise ConfigError(f"out of memory ({what}); make the model or the batch smaller (e.g. "
                      "LanguageModel.units, TextCorpus.batch_size)") from None


def _restore(trainer, model_dir: str, mode: str) -> int:
  step = trainer.restore(read_only=True)  # These modes change nothing in checkpoints/.
  if step is None:
    raise ConfigError(f"--mode={mode} needs a trained model, but {model_dir}/checkpoints has no "
                      "checkpoint; train first with --mode=train and the same --model_dir")
  return step


IMPLEMENTATIONS_FILE = "lstm_implementations.json"


def _check_lstm_implementations(model_dir: str, task, step: int | None, config) -> list:
  """Which LSTM implementation (fused kernel or loop) each layer will run. Under
  `Trainer.deterministic = True` a resumed run must run the ones the checkpoint was trained with,
  since the two round differently (ConfigError otherwise: the launcher exits 2)."""
  planned = list(planned_implementations(task.model, config.jit_compile))
  path = os.path.join(model_dir, IMPLEMENTATIONS_FILE)
  if planned and step is not None and config.deterministic and os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)["implementations"]
    if recorded != planned:
      raise ConfigError(
          f"Trainer.deterministic=True, but the checkpoint at step {step} was trained with LSTM "
          f"implementations {recorded} and this run would use {planned}, so it would not repeat "
          f"the uninterrupted run; bind the same implementation (e.g. --gin_bindings=\""
          f"LanguageModel.implementation='{recorded[0]}'\"; 'fused' needs the kernel built here) "
          "or set Trainer.deterministic=False to resume anyway")
  return planned


def _record_lstm_implementations(model_dir: str, planned: list) -> None:
  """Writes `planned` to model_dir (the chief only), for the next resume's check."""
  if not planned or not run_lock.is_chief():
    return
  path = os.path.join(model_dir, IMPLEMENTATIONS_FILE)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump({"implementations": planned}, f)
  os.replace(tmp, path)
  logging.info("LSTM implementations: %s (recorded in %s)", planned, path)


@gin.configurable
def run_experiment(model_dir: str, mode: str = "train", *, task_fn=None) -> dict:
  """Runs one mode of an experiment in `model_dir`.

  Args:
    model_dir: Checkpoints, summaries, the operative config and the task's assets go here.
    mode: One of MODES (see the module docstring).
    task_fn: Builds the task: `task_fn(model_dir=...)` -> `tbptt.trainer.task.Task` (gin:
      `@LanguageModelTask`).

  Returns:
    What the mode produced: train/eval metrics, {"sample": text} or {"export": path}.

  Raises:
    ConfigError: a usage or configuration problem (the launcher exits 2): also a model_dir that
      cannot be used or written (full disk, read-only) and one another training run holds.
    TrainingError: training failed (the launcher exits 1).
  """
  if mode not in MODES:
    raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
  storage.check_model_dir(model_dir, writes=mode in WRITING_MODES)
  locked = mode in TRAINING_MODES and run_lock.is_chief()
  # The lock comes before anything is written to model_dir: a second run changes nothing.
  with run_lock.RunLock(model_dir) if locked else contextlib.nullcontext():
    with _out_of_memory_as_config_errors(), storage.write_errors(model_dir):
      return _run(model_dir, mode, task_fn)


def _run(model_dir: str, mode: str, task_fn) -> dict:
  _, task, trainer = build(model_dir, task_fn)
  if mode in ("train", "train_and_eval"):
    step = trainer.restore()  # Fails on a checkpoint that does not fit before anything is written.
    planned = _check_lstm_implementations(model_dir, task, step, trainer.config)
    write_assets = getattr(task, "write_assets", None)
    if write_assets is not None:
      write_assets()
    _record_lstm_implementations(model_dir, planned)
    result = trainer.train()
    if mode == "train_and_eval":
      result["eval"] = trainer.evaluate(splits=EVAL_SPLITS)
    return result
  step = _restore(trainer, model_dir, mode)
  if mode == "eval":
    return trainer.evaluate(splits=EVAL_SPLITS)  # With the evaluation weights, as in training.
  with trainer.evaluation_weights():  # NT-ASGD's averages once there are any.
    if mode == "sample":
      return {"step": step, "sample": sampling.sample_text(task)}
    return {"step": step, "export": export_lib.export(task, model_dir)}
